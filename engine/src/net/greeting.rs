//! Greeting checks (reference §5.2, §12): the rules a server applies to a
//! client's greeting request and a client applies to the server's reply.
//!
//! Guarantees: a greeting that passes [`check_greeting`] names this volume,
//! a supported format version equal to the volume's, a nonzero rid and only
//! known flag bits. Pure functions; touches only `format::net`.

use crate::format::net::{NetGreeting, GREETING_FLAG_FAREWELL, GREETING_FLAG_QUORUM};

/// Oldest and newest format versions a greeting may carry.
pub const FMT_VERS_MIN: u64 = 1;
pub const FMT_VERS_MAX: u64 = 2;
/// Every greeting flag this implementation understands.
pub const GREETING_KNOWN_FLAGS: u64 = GREETING_FLAG_FAREWELL | GREETING_FLAG_QUORUM;

/// Why a greeting was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreetingError {
    Fsid {
        got: u64,
        want: u64,
    },
    FmtVers {
        got: u64,
        want: u64,
    },
    Flags(u64),
    ZeroRid,
    /// A reply carrying term 0: no server has that term.
    ZeroTerm,
}

impl GreetingError {
    /// The errno sent back in a refusing reply.
    pub fn errno(&self) -> i32 {
        libc::EINVAL
    }
}

/// Checks a greeting request received by the server of volume `fsid`
/// whose format version is `fmt_vers`.
pub fn check_greeting(g: &NetGreeting, fsid: u64, fmt_vers: u64) -> Result<(), GreetingError> {
    debug_assert!((FMT_VERS_MIN..=FMT_VERS_MAX).contains(&fmt_vers));
    if g.fsid.get() != fsid {
        return Err(GreetingError::Fsid {
            got: g.fsid.get(),
            want: fsid,
        });
    }
    let vers = g.fmt_vers.get();
    if !(FMT_VERS_MIN..=FMT_VERS_MAX).contains(&vers) || vers != fmt_vers {
        return Err(GreetingError::FmtVers {
            got: vers,
            want: fmt_vers,
        });
    }
    if g.flags.get() & !GREETING_KNOWN_FLAGS != 0 {
        return Err(GreetingError::Flags(g.flags.get()));
    }
    if g.rid.get() == 0 {
        return Err(GreetingError::ZeroRid);
    }
    Ok(())
}

/// Checks the server's reply against the greeting the client sent.
pub fn check_greeting_reply(reply: &NetGreeting, sent: &NetGreeting) -> Result<(), GreetingError> {
    check_greeting(reply, sent.fsid.get(), sent.fmt_vers.get())?;
    if reply.server_term.get() == 0 {
        return Err(GreetingError::ZeroTerm);
    }
    Ok(())
}

/// Whether the greeting asks for a farewell.
pub fn is_farewell(g: &NetGreeting) -> bool {
    g.flags.get() & GREETING_FLAG_FAREWELL != 0
}

/// Whether the greeting comes from a quorum member.
pub fn is_quorum(g: &NetGreeting) -> bool {
    g.flags.get() & GREETING_FLAG_QUORUM != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(fsid: u64, vers: u64, rid: u64, flags: u64) -> NetGreeting {
        NetGreeting {
            fsid: fsid.into(),
            fmt_vers: vers.into(),
            server_term: 0.into(),
            rid: rid.into(),
            flags: flags.into(),
        }
    }

    #[test]
    fn greeting_checks() {
        assert!(check_greeting(&g(7, 2, 1, 3), 7, 2).is_ok());
        assert!(check_greeting(&g(7, 1, 1, 0), 7, 1).is_ok());
        assert_eq!(
            check_greeting(&g(8, 2, 1, 0), 7, 2),
            Err(GreetingError::Fsid { got: 8, want: 7 })
        );
        assert!(check_greeting(&g(7, 3, 1, 0), 7, 2).is_err());
        assert!(check_greeting(&g(7, 0, 1, 0), 7, 2).is_err());
        assert!(
            check_greeting(&g(7, 1, 1, 0), 7, 2).is_err(),
            "version must match the volume"
        );
        assert_eq!(
            check_greeting(&g(7, 2, 1, 4), 7, 2),
            Err(GreetingError::Flags(4))
        );
        assert_eq!(
            check_greeting(&g(7, 2, 0, 0), 7, 2),
            Err(GreetingError::ZeroRid)
        );
        assert!(is_farewell(&g(7, 2, 1, 1)) && !is_quorum(&g(7, 2, 1, 1)));
        assert!(
            check_greeting_reply(&g(7, 2, 1, 0), &g(7, 2, 1, 0)).is_err(),
            "term 0"
        );
    }
}
