//! `scoutfs quota-add -r RULE`, `quota-del -r RULE`, `quota-list [-U]`,
//! `quota-wipe` and `quota-restore` (reference §9 "Quotas", §10;
//! cli-contract.md), each with `[-p PATH]`.
//!
//! Rule text: `PRIO V,S,F V,S,F V,S,F OP LIMIT FLAG` — PRIO 0..255, three
//! totl name components (value, source L literal / P project / U uid / G
//! gid, flag `-` or `S` select), OP `I` (inode creation) or `D` (data
//! allocation), LIMIT, FLAG `-` or `C` (compare the count). quota-list
//! prints the same form (`%3u ` then `%llu,%c,%c ` three times then
//! `%c %llu %c`), highest-sorting rule first (`-U`: key order), and
//! quota-restore reads it back from stdin, one rule a line. Changing rules
//! needs CAP_SYS_ADMIN.

use std::io::{BufRead, Write};

use engine::format::items::{
    QuotaRule, QUOTA_NAME_FLAG_SELECT, QUOTA_OP_DATA, QUOTA_OP_INODE, QUOTA_RULE_FLAG_TOTL_COUNT,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::args::{self, OptSpec};
use crate::mnt;

use crate::mnt::{path_opt, PATH_OPT as PATH};
const RULE: OptSpec = OptSpec {
    short: 'r',
    long: "rule",
    takes_arg: true,
    help: "Quota rule string",
};
const UNSORTED: OptSpec = OptSpec {
    short: 'U',
    long: "unsorted",
    takes_arg: false,
    help: "Print rules in stored order",
};

const SOURCES: [char; 4] = ['L', 'P', 'U', 'G'];

/// Parses the rule text.
pub fn parse_rule(s: &str) -> Result<QuotaRule, String> {
    let bad = |what: &str| format!("invalid {what} in rule '{s}'");
    let tok: Vec<&str> = s.split_whitespace().collect();
    if tok.len() != 7 {
        return Err(format!(
            "rule '{s}' must have 7 fields: PRIO V,S,F V,S,F V,S,F OP LIMIT FLAG"
        ));
    }
    let prio = args::parse_u64(tok[0])
        .ok()
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| bad("priority"))?;
    let mut r = QuotaRule {
        prio,
        ..QuotaRule::default()
    };
    for i in 0..3 {
        let f: Vec<&str> = tok[1 + i].split(',').collect();
        let [v, src, flag] = f.as_slice() else {
            return Err(bad("name"));
        };
        r.name_val[i] = args::parse_u64(v).map_err(|_| bad("name value"))?.into();
        r.name_source[i] = match *src {
            "L" => 0,
            "P" => 1,
            "U" => 2,
            "G" => 3,
            _ => return Err(bad("name source")),
        };
        r.name_flags[i] = match *flag {
            "-" => 0,
            "S" => QUOTA_NAME_FLAG_SELECT,
            _ => return Err(bad("name flag")),
        };
    }
    r.op = match tok[4] {
        "I" => QUOTA_OP_INODE,
        "D" => QUOTA_OP_DATA,
        _ => return Err(bad("op")),
    };
    r.limit = args::parse_human(tok[5]).map_err(|_| bad("limit"))?.into();
    r.rule_flags = match tok[6] {
        "-" => 0,
        "C" => QUOTA_RULE_FLAG_TOTL_COUNT,
        _ => return Err(bad("flag")),
    };
    Ok(r)
}

/// Formats a rule like the original's quota-list.
pub fn format_rule(r: &QuotaRule) -> String {
    let mut s = format!("{:3} ", r.prio);
    for i in 0..3 {
        let src = SOURCES
            .get(r.name_source[i] as usize)
            .copied()
            .unwrap_or('?');
        let flag = if r.name_flags[i] & QUOTA_NAME_FLAG_SELECT != 0 {
            'S'
        } else {
            '-'
        };
        s.push_str(&format!("{},{src},{flag} ", r.name_val[i].get()));
    }
    let op = if r.op == QUOTA_OP_INODE { 'I' } else { 'D' };
    let flag = if r.rule_flags & QUOTA_RULE_FLAG_TOTL_COUNT != 0 {
        'C'
    } else {
        '-'
    };
    s.push_str(&format!("{op} {} {flag}", r.limit.get()));
    s
}

fn client(cmd: &str, p: &args::Parsed) -> Result<mnt::Client, i32> {
    match mnt::client_for(path_opt(p).as_deref()) {
        Err(e) => Err(crate::failed(cmd, e)),
        Ok(Err(e)) => Err(ioctl_failed(cmd, e)),
        Ok(Ok(c)) => Ok(c),
    }
}

fn ioctl_failed(cmd: &str, e: i32) -> i32 {
    eprintln!("ioctl failed: {} ({e})", crate::strerror(e));
    crate::failed(cmd, e)
}

/// `quota-add` (`add`) and `quota-del`.
pub fn change_main(argv: &[String], add: bool) -> i32 {
    let cmd = if add { "quota-add" } else { "quota-del" };
    let p = match args::parse(cmd, "", "Add or delete a quota rule", &[RULE, PATH], argv) {
        Ok(p) => p,
        Err(s) => return args::stop_code(cmd, s),
    };
    if !p.operands.is_empty() {
        return args::usage_error(cmd, "too many arguments");
    }
    let Some(text) = p
        .opts
        .iter()
        .rev()
        .find(|(c, _)| *c == 'r')
        .and_then(|(_, v)| v.clone())
    else {
        return args::usage_error(cmd, "must provide rule with --rule");
    };
    let rule = match parse_rule(&text) {
        Ok(r) => r,
        Err(m) => return args::usage_error(cmd, &m),
    };
    let c = match client(cmd, &p) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let bytes: [u8; 48] = rule.as_bytes().try_into().expect("48-byte rule");
    match c.quota_change(&bytes, add) {
        Ok(()) => 0,
        Err(e) => ioctl_failed(cmd, mnt::errno(&e)),
    }
}

/// `quota-list`.
pub fn list_main(argv: &[String]) -> i32 {
    const CMD: &str = "quota-list";
    let p = match args::parse(CMD, "", "List quota rules", &[UNSORTED, PATH], argv) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    if !p.operands.is_empty() {
        return args::usage_error(CMD, "too many arguments");
    }
    let c = match client(CMD, &p) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut rules = Vec::new();
    loop {
        let (batch, last) = match c.quota_list(rules.len() as u32) {
            Ok(r) => r,
            Err(e) => return ioctl_failed(CMD, mnt::errno(&e)),
        };
        let n = batch.len();
        for b in batch {
            match QuotaRule::read_from_bytes(&b) {
                Ok(r) => rules.push(r),
                Err(_) => return ioctl_failed(CMD, libc::EIO),
            }
        }
        if last || n == 0 {
            break;
        }
    }
    if !p.opts.iter().any(|(c, _)| *c == 'U') {
        rules.sort_by_key(|r| std::cmp::Reverse(engine::fs::rule_order(r)));
    }
    let mut out = std::io::stdout().lock();
    for r in &rules {
        let _ = writeln!(out, "{}", format_rule(r));
    }
    0
}

/// `quota-wipe`.
pub fn wipe_main(argv: &[String]) -> i32 {
    const CMD: &str = "quota-wipe";
    let p = match args::parse(CMD, "", "Delete every quota rule", &[PATH], argv) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    if !p.operands.is_empty() {
        return args::usage_error(CMD, "too many arguments");
    }
    let c = match client(CMD, &p) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match c.quota_wipe() {
        Ok(_) => 0,
        Err(e) => ioctl_failed(CMD, mnt::errno(&e)),
    }
}

/// `quota-restore`: rules from stdin in the quota-list form.
pub fn restore_main(argv: &[String]) -> i32 {
    const CMD: &str = "quota-restore";
    let p = match args::parse(CMD, "", "Add quota rules read from stdin", &[PATH], argv) {
        Ok(p) => p,
        Err(s) => return args::stop_code(CMD, s),
    };
    if !p.operands.is_empty() {
        return args::usage_error(CMD, "too many arguments");
    }
    let c = match client(CMD, &p) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else {
            return crate::failed(CMD, libc::EIO);
        };
        if line.trim().is_empty() {
            continue;
        }
        let rule = match parse_rule(&line) {
            Ok(r) => r,
            Err(m) => {
                eprintln!("{m}");
                return crate::failed(CMD, libc::EINVAL);
            }
        };
        let bytes: [u8; 48] = rule.as_bytes().try_into().expect("48-byte rule");
        if let Err(e) = c.quota_change(&bytes, true) {
            return ioctl_failed(CMD, mnt::errno(&e));
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_text_round_trips() {
        for s in [
            "  7 13,L,- 15,L,- 17,L,- I 33 -",
            " 10 7,L,- 0,U,- 0,L,- D 1000000 -",
            "255 1,L,- 1000,U,S 2,G,- I 5 C",
        ] {
            let r = parse_rule(s).unwrap();
            assert_eq!(format_rule(&r), s);
        }
        assert!(parse_rule("1 2,L,- 3,L,- 4,X,- I 5 -").is_err());
        assert!(parse_rule("1 2,L,- 3,L,- I 5 -").is_err());
        assert!(parse_rule("300 2,L,- 3,L,- 4,L,- I 5 -").is_err());
        assert!(parse_rule("1 2,L,- 3,L,- 4,L,- X 5 -").is_err());
        assert!(parse_rule("1 2,L,- 3,L,- 4,L,- I 5 Z").is_err());
    }
}
