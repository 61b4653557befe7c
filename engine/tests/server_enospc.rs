//! Allocator pressure on a tiny volume (trap 28: 7e935898 / 687f1041 /
//! e457694f). On a 256 MiB metadata device one mount grows its log tree
//! transaction after transaction: refills carry LOW once free space falls
//! to the (device-scaled) reserve, and then its meta_avail can't be refilled
//! and an allocation fails with ENOSPC. Throughout, the server keeps answering (no panic, no wedged
//! commit), the volume checks clean, and once the mount deletes items and
//! commits, its freed blocks come back through the server and allocation
//! works again.
//!
//! The server runs with finalization off (`ServerOptions::finalize`), so
//! this looks at the allocators alone: LOW would otherwise finalize the
//! tree and the freed blocks would come back through a merge (that path,
//! through the filesystem, is `enospc_fs.rs`).

mod server_support;

use engine::format::superblock::ALLOC_FLAG_LOW;
use engine::runtime::for_each_runtime;
use server_support::*;

/// Below this many avail blocks the mount refuses allocating transactions
/// itself (what LOW makes a real mount do), keeping enough to delete.
const CLIENT_MARGIN_BLOCKS: u64 = 64;
const PUTS: usize = 400;

#[test]
fn server_tiny_volume_reaches_enospc_cleanly_and_recovers_after_freeing() {
    for_each_runtime(5, |rt| async move {
        let (meta, data) = mkfs(256 * MIB, GIB, 5);
        let s = engine::server::Server::open(
            std::sync::Arc::new(meta.clone()),
            std::sync::Arc::new(data.clone()),
            rt.clone(),
            engine::server::ServerOptions {
                finalize: false,
                ..Default::default()
            },
        )
        .await
        .expect("server opens");
        let mut a = Client::new(&s, &meta, &rt, 0x51);
        a.sequential = true;
        a.greet().await.unwrap();

        let mut enospc = false;
        let mut low_seen = false;
        let mut txns = 0;
        for _ in 0..400 {
            let lt = a.get_log_trees().await.unwrap();
            low_seen |= lt.meta_avail.flags.get() & ALLOC_FLAG_LOW != 0;
            // Data fills follow the device (an eighth of 1 GiB here), so
            // running out of metadata never starves the data side.
            assert_eq!(
                lt.data_avail.flags.get() & ALLOC_FLAG_LOW,
                0,
                "a 1 GiB data device still fills its mount's share"
            );
            let res = if lt.meta_avail.total_nr.get() < CLIENT_MARGIN_BLOCKS {
                Err(libc::ENOSPC)
            } else {
                a.build(PUTS, 0).await
            };
            match res {
                Ok(lt) => {
                    a.commit(&lt).await.unwrap();
                    txns += 1;
                }
                Err(e) => {
                    assert_eq!(e, libc::ENOSPC);
                    // Close the transaction unchanged.
                    let lt = a.lt.unwrap();
                    a.commit(&lt).await.unwrap();
                    enospc = true;
                    break;
                }
            }
        }
        assert!(enospc, "never ran out after {txns} transactions");
        assert!(low_seen, "ENOSPC without LOW first");
        assert!(txns > 5, "ran out too early ({txns})");
        assert_clean(&meta, &data, "at ENOSPC");

        // The server still works.
        let st = a.statfs().await.unwrap();
        assert!(st.free_meta_blocks.get() < st.total_meta_blocks.get());
        a.alloc_inodes(10).await.unwrap();
        a.last_seq().await.unwrap();
        // Another transaction: still refused, still clean.
        let lt = a.get_log_trees().await.unwrap();
        assert!(lt.meta_avail.total_nr.get() < CLIENT_MARGIN_BLOCKS + 200);

        // Free: delete most items over a few transactions.
        let _ = a.lt.take();
        for _ in 0..6 {
            a.cycle(0, PUTS * 2).await.unwrap();
        }
        assert_clean(&meta, &data, "after freeing");

        // Allocation works again.
        let lt = a.get_log_trees().await.unwrap();
        assert!(
            lt.meta_avail.total_nr.get() >= CLIENT_MARGIN_BLOCKS,
            "refill after freeing gave {}",
            lt.meta_avail.total_nr.get()
        );
        let lt = a.build(PUTS, 0).await.expect("allocating after freeing");
        a.commit(&lt).await.unwrap();
        assert_clean(&meta, &data, "after allocating again");

        a.farewell().await.unwrap();
        assert_clean(&meta, &data, "after farewell");
    });
}
