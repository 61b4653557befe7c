//! glibc-argp-style argument parsing shared by every subcommand.
//!
//! Guarantees: GNU permutation (options may follow operands), `--` ends
//! options, short options may be grouped and take their argument attached or
//! as the next word, long options accept `--name=value`, `--name value` and
//! unique prefixes. Usage errors print the two argp lines on stderr and map to
//! exit code 64. Numbers parse like `strtoull(…, 0)` (0x hex, leading-0
//! octal) with optional K/M/G/T/P suffixes for sizes.

use crate::EX_USAGE;

/// One option a subcommand accepts.
pub struct OptSpec {
    pub short: char,
    pub long: &'static str,
    pub takes_arg: bool,
    pub help: &'static str,
}

/// Parsed command line: options in the order given, then operands.
#[derive(Debug, Default)]
pub struct Parsed {
    pub opts: Vec<(char, Option<String>)>,
    pub operands: Vec<String>,
}

/// Outcome of parsing that is not a normal parse.
#[derive(Debug)]
pub enum Stop {
    /// `--help`/`--usage` was printed: exit 0.
    Help,
    /// A usage error message (without the subcommand prefix).
    Usage(String),
}

/// Prints an argp usage error and returns its exit code.
pub fn usage_error(cmd: &str, msg: &str) -> i32 {
    eprintln!("{cmd}: {msg}");
    eprintln!("Try `{cmd} --help' or `{cmd} --usage' for more information.");
    EX_USAGE
}

/// Maps a parse stop to an exit code.
pub fn stop_code(cmd: &str, stop: Stop) -> i32 {
    match stop {
        Stop::Help => 0,
        Stop::Usage(msg) => usage_error(cmd, &msg),
    }
}

fn print_help(cmd: &str, operands: &str, doc: &str, specs: &[OptSpec]) {
    println!("Usage: {cmd} [OPTION...] {operands}");
    println!("{doc}");
    println!();
    for s in specs {
        let arg = if s.takes_arg { "=ARG" } else { "" };
        println!("  -{}, --{}{arg:<10}  {}", s.short, s.long, s.help);
    }
    println!("  -?, --help                 Give this help list");
    println!("      --usage                Give a short usage message");
}

/// Parses `args` against `specs`.
pub fn parse(
    cmd: &str,
    operands_doc: &str,
    doc: &str,
    specs: &[OptSpec],
    args: &[String],
) -> Result<Parsed, Stop> {
    parse_opts(cmd, operands_doc, doc, specs, args, false)
}

/// [`parse`], where `negative_operands` makes words like `-1` (a dash
/// and a digit) operands rather than options: walk positions use them.
pub fn parse_opts(
    cmd: &str,
    operands_doc: &str,
    doc: &str,
    specs: &[OptSpec],
    args: &[String],
    negative_operands: bool,
) -> Result<Parsed, Stop> {
    let mut out = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if a == "--" {
            out.operands.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            if name == "help" || name == "usage" {
                print_help(cmd, operands_doc, doc, specs);
                return Err(Stop::Help);
            }
            let exact: Vec<&OptSpec> = specs.iter().filter(|s| s.long == name).collect();
            let matches: Vec<&OptSpec> = if exact.is_empty() {
                specs.iter().filter(|s| s.long.starts_with(name)).collect()
            } else {
                exact
            };
            let spec = match matches.as_slice() {
                [one] => *one,
                [] => return Err(Stop::Usage(format!("unrecognized option '{a}'"))),
                _ => return Err(Stop::Usage(format!("option '{a}' is ambiguous"))),
            };
            if spec.takes_arg {
                let val = match inline {
                    Some(v) => v,
                    None if i < args.len() => {
                        i += 1;
                        args[i - 1].clone()
                    }
                    None => {
                        return Err(Stop::Usage(format!(
                            "option '--{}' requires an argument",
                            spec.long
                        )))
                    }
                };
                out.opts.push((spec.short, Some(val)));
            } else {
                if inline.is_some() {
                    return Err(Stop::Usage(format!(
                        "option '--{}' doesn't allow an argument",
                        spec.long
                    )));
                }
                out.opts.push((spec.short, None));
            }
            continue;
        }
        let numeric = a.as_bytes().get(1).is_some_and(u8::is_ascii_digit);
        if a.len() > 1 && a.starts_with('-') && !(negative_operands && numeric) {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                j += 1;
                if c == '?' {
                    print_help(cmd, operands_doc, doc, specs);
                    return Err(Stop::Help);
                }
                let Some(spec) = specs.iter().find(|s| s.short == c) else {
                    return Err(Stop::Usage(format!("invalid option -- '{c}'")));
                };
                if spec.takes_arg {
                    let rest: String = chars[j..].iter().collect();
                    let val = if !rest.is_empty() {
                        rest
                    } else if i < args.len() {
                        i += 1;
                        args[i - 1].clone()
                    } else {
                        return Err(Stop::Usage(format!("option requires an argument -- '{c}'")));
                    };
                    out.opts.push((c, Some(val)));
                    break;
                }
                out.opts.push((c, None));
            }
            continue;
        }
        out.operands.push(a.clone());
    }
    Ok(out)
}

/// `strtoull(s, &end, 0)` over the whole string: returns the value and the
/// unparsed tail, or None when no digits were found or the value overflows.
fn strtoull_prefix(s: &str) -> Option<(u64, &str)> {
    let t = s.trim_start();
    let t = t.strip_prefix('+').unwrap_or(t);
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        if h.starts_with(|c: char| c.is_ascii_hexdigit()) {
            (16, h)
        } else {
            (10, &t[..1])
        }
    } else if t.starts_with('0') {
        (8, t)
    } else {
        (10, t)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let v = u64::from_str_radix(&digits[..end], radix).ok()?;
    let consumed = digits[end..].as_ptr() as usize - s.as_ptr() as usize;
    Some((v, &s[consumed..]))
}

/// Parses a whole string as a u64 with base prefixes.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    match strtoull_prefix(s) {
        Some((v, "")) => Ok(v),
        _ => Err(format!("invalid 64bit value: '{s}'")),
    }
}

/// Parses a size: a u64 with base prefixes and an optional K/M/G/T/P suffix
/// (powers of 1024).
pub fn parse_human(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid size value: '{s}'");
    let (v, tail) = strtoull_prefix(s).ok_or_else(bad)?;
    let shift = match tail {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        "P" | "p" => 50,
        _ => return Err(bad()),
    };
    v.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[OptSpec] = &[
        OptSpec {
            short: 'Q',
            long: "quorum-slot",
            takes_arg: true,
            help: "",
        },
        OptSpec {
            short: 'f',
            long: "force",
            takes_arg: false,
            help: "",
        },
        OptSpec {
            short: 'A',
            long: "allow-small-size",
            takes_arg: false,
            help: "",
        },
    ];

    fn p(a: &[&str]) -> Result<Parsed, Stop> {
        let v: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        parse("t", "", "", SPECS, &v)
    }

    #[test]
    fn permutes_and_groups() {
        let r = p(&["a", "-fAQ0,1.2.3.4,5", "b", "--quorum=x", "--", "-f"]).unwrap();
        assert_eq!(r.operands, vec!["a", "b", "-f"]);
        assert_eq!(r.opts.len(), 4);
        assert_eq!(r.opts[3], ('Q', Some("x".into())));
        assert!(matches!(p(&["-x"]), Err(Stop::Usage(_))));
        assert!(matches!(p(&["-Q"]), Err(Stop::Usage(_))));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("0x10"), Ok(16));
        assert_eq!(parse_u64("010"), Ok(8));
        assert_eq!(parse_u64("0"), Ok(0));
        assert!(parse_u64("12a").is_err());
        assert!(parse_u64("").is_err());
        assert_eq!(parse_human("64G"), Ok(64 << 30));
        assert_eq!(parse_human("0x1K"), Ok(1024));
        assert!(parse_human("1X").is_err());
    }
}
