//! The command line, parsed exactly as the Go daemon's `flag` package does, plus the help text
//! and the `healthcheck` subcommand.
//!
//! Parsing is pure: [`parse`] turns the arguments into a [`Command`] and never prints or exits.
//! It only records the flags that were given; defaults and the other layers are the config
//! module's business.

use std::path::PathBuf;

use thiserror::Error;

use crate::config::options::{
    self, Kind, OptionId, OptionSpec, ValueError, CONFIG_FLAG, OPTIONS, VERSION_FLAG,
};

/// Where `xray healthcheck` looks when no `--url` is given: the default admin address.
pub const DEFAULT_HEALTHCHECK_URL: &str = "http://127.0.0.1:2100/readyz";

/// The subcommand word; only recognised as the very first argument, so it cannot collide with
/// the positional arguments the Go daemon silently ignores after the flags.
const HEALTHCHECK: &str = "healthcheck";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon.
    Run(Flags),
    /// `-h`, `-help`, `--help`: print [`usage`] to stdout and exit 0.
    Help,
    /// `-v`: load and validate the configuration as for `Run` (a bad config still exits 1, as in
    /// Go), then print [`version_line`] and exit 0.
    Version(Flags),
    /// `xray healthcheck [--url URL]`: probe the admin readiness endpoint.
    Healthcheck {
        /// The URL to probe.
        url: String,
    },
}

/// The flags given explicitly on the command line; nothing is filled in from defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// One entry per option given, holding the last value when a flag is repeated.
    pub options: Vec<FlagValue>,
    /// `-c/--config`: the one configuration file to load. An empty value counts as not given,
    /// as in Go.
    pub config: Option<PathBuf>,
}

/// One option flag as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagValue {
    /// The option the flag sets.
    pub id: OptionId,
    /// The flag as typed, dashes included and value excluded (`-m`, `--buffer-memory`), so the
    /// configuration can say which flag set a value.
    pub flag: String,
    /// The raw value; `"true"` for a bare boolean flag.
    pub value: String,
}

impl Flags {
    /// The flag that set `id`, if one did.
    pub fn get(&self, id: OptionId) -> Option<&FlagValue> {
        self.options.iter().find(|f| f.id == id)
    }

    /// Records a flag; a repeated flag replaces the earlier value (last wins, as in Go).
    pub fn set(&mut self, id: OptionId, flag: impl Into<String>, value: impl Into<String>) {
        let entry = FlagValue {
            id,
            flag: flag.into(),
            value: value.into(),
        };
        match self.options.iter_mut().find(|f| f.id == id) {
            Some(existing) => *existing = entry,
            None => self.options.push(entry),
        }
    }
}

/// A command line the Go `flag` package would reject; `Display` is Go's message, with the name
/// as the user typed it after a single dash.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CliError {
    /// No such flag (the name without dashes).
    #[error("flag provided but not defined: -{0}")]
    NotDefined(String),
    /// A non-boolean flag whose value does not parse as its type.
    #[error("invalid value {} for flag -{name}: {reason}", go_quote(.value))]
    InvalidValue {
        /// The flag name as typed, without dashes.
        name: String,
        /// The rejected value.
        value: String,
        /// Go's reason: `parse error` or `value out of range`.
        reason: &'static str,
    },
    /// A boolean flag given a value that Go's `strconv.ParseBool` rejects.
    #[error("invalid boolean value {} for -{name}: {reason}", go_quote(.value))]
    InvalidBool {
        /// The flag name as typed, without dashes.
        name: String,
        /// The rejected value.
        value: String,
        /// Go's reason: `parse error`.
        reason: &'static str,
    },
    /// A non-boolean flag at the end of the arguments (the name without dashes).
    #[error("flag needs an argument: -{0}")]
    NeedsArgument(String),
    /// An argument such as `---x` or `-=x` (the whole argument).
    #[error("bad flag syntax: {0}")]
    BadSyntax(String),
}

impl CliError {
    /// The process exit status: 2, like Go's `flag.ExitOnError`.
    pub fn exit_code(&self) -> i32 {
        2
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, CliError> {
    if args.first().map(String::as_str) == Some(HEALTHCHECK) {
        return parse_healthcheck(&args[1..]);
    }
    let parsed = match go_flags(args, daemon_flag_kind)? {
        Parsed::Help => return Ok(Command::Help),
        Parsed::Flags(parsed) => parsed,
    };
    let mut flags = Flags::default();
    let mut version = false;
    for GivenFlag { name, typed, value } in parsed {
        if name == CONFIG_FLAG.short || name == CONFIG_FLAG.long {
            flags.config = (!value.is_empty()).then(|| PathBuf::from(value));
        } else if name == VERSION_FLAG.short || name == VERSION_FLAG.long {
            // Already validated by `go_flags`, so only the two outcomes remain.
            version = options::parse_go_bool(&value) == Ok(true);
        } else if let Some(spec) = options::by_flag(&name) {
            flags.set(spec.id, typed, value);
        }
    }
    Ok(if version {
        Command::Version(flags)
    } else {
        Command::Run(flags)
    })
}

/// `healthcheck`'s own flags, parsed with the same Go rules so `-url x` and `--url=x` both work.
fn parse_healthcheck(args: &[String]) -> Result<Command, CliError> {
    let kind = |name: &str| (name == "url").then_some(Kind::String);
    let parsed = match go_flags(args, kind)? {
        Parsed::Help => return Ok(Command::Help),
        Parsed::Flags(parsed) => parsed,
    };
    let url = parsed
        .into_iter()
        .last()
        .map_or_else(|| DEFAULT_HEALTHCHECK_URL.to_string(), |f| f.value);
    Ok(Command::Healthcheck { url })
}

/// The kind of a daemon flag name (without dashes), `None` if no such flag exists.
fn daemon_flag_kind(name: &str) -> Option<Kind> {
    if name == CONFIG_FLAG.short || name == CONFIG_FLAG.long {
        return Some(CONFIG_FLAG.kind);
    }
    if name == VERSION_FLAG.short || name == VERSION_FLAG.long {
        return Some(VERSION_FLAG.kind);
    }
    options::by_flag(name).map(|s| s.kind)
}

enum Parsed {
    Help,
    Flags(Vec<GivenFlag>),
}

struct GivenFlag {
    /// The name without dashes.
    name: String,
    /// The flag as typed, without `=value`.
    typed: String,
    value: String,
}

/// Go's `FlagSet.Parse` (`parseOne` in a loop) over a flag set described by `kind_of`.
/// Values are checked against their kind here because Go rejects them at parse time (exit 2).
fn go_flags(args: &[String], kind_of: impl Fn(&str) -> Option<Kind>) -> Result<Parsed, CliError> {
    let mut given = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        // A lone "-" or anything not starting with '-' is the first positional: stop.
        if arg.len() < 2 || !arg.starts_with('-') {
            break;
        }
        let dashes = if arg.starts_with("--") { 2 } else { 1 };
        if arg == "--" {
            break;
        }
        let body = &arg[dashes..];
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(CliError::BadSyntax(arg.clone()));
        }
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let typed = arg[..dashes + name.len()].to_string();
        let Some(kind) = kind_of(name) else {
            if name == "help" || name == "h" {
                return Ok(Parsed::Help);
            }
            return Err(CliError::NotDefined(name.to_string()));
        };
        let value = if kind == Kind::Bool {
            let value = inline.unwrap_or("true");
            options::parse_go_bool(value).map_err(|e| CliError::InvalidBool {
                name: name.to_string(),
                value: value.to_string(),
                reason: e.go_reason(),
            })?;
            value.to_string()
        } else {
            let value = match inline {
                Some(v) => v.to_string(),
                None => rest
                    .next()
                    .cloned()
                    .ok_or_else(|| CliError::NeedsArgument(name.to_string()))?,
            };
            check_value(kind, &value).map_err(|e| CliError::InvalidValue {
                name: name.to_string(),
                value: value.clone(),
                reason: e.go_reason(),
            })?;
            value
        };
        given.push(GivenFlag {
            name: name.to_string(),
            typed,
            value,
        });
    }
    Ok(Parsed::Flags(given))
}

fn check_value(kind: Kind, value: &str) -> Result<(), ValueError> {
    options::parse_text(kind, value).map(drop)
}

/// Go's `strconv.Quote`, which `flag` uses (`%q`) to show a bad value.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                if (c as u32) <= 0xffff {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The Go daemon's help block, in its order; frozen, because new options are long-only and
/// listed under "Additional options" instead.
const GO_HELP_ORDER: &[GoHelpRow] = &[
    GoHelpRow::Option(OptionId::ResourceArn),
    GoHelpRow::Option(OptionId::LocalMode),
    GoHelpRow::Option(OptionId::TotalBufferSizeMb),
    GoHelpRow::Option(OptionId::Region),
    GoHelpRow::Option(OptionId::UdpAddress),
    GoHelpRow::Option(OptionId::TcpAddress),
    GoHelpRow::Option(OptionId::RoleArn),
    GoHelpRow::Config,
    GoHelpRow::Option(OptionId::LogPath),
    GoHelpRow::Option(OptionId::LogLevel),
    GoHelpRow::Option(OptionId::ProxyAddress),
    GoHelpRow::Version,
];

enum GoHelpRow {
    Option(OptionId),
    Config,
    Version,
}

/// The help text: the Go daemon's byte for byte (each line ending in `\n`, as its `fmt.Println`
/// prints them), then a blank line and the options and subcommand only this daemon has.
pub fn usage() -> String {
    let mut out = String::from("Usage: X-Ray [options]\n");
    for row in GO_HELP_ORDER {
        let (short, long, kind, usage) = match row {
            GoHelpRow::Option(id) => {
                let s: &OptionSpec = options::spec(*id);
                (s.short.unwrap_or(""), s.long, s.kind, s.usage)
            }
            GoHelpRow::Config => (
                CONFIG_FLAG.short,
                CONFIG_FLAG.long,
                CONFIG_FLAG.kind,
                CONFIG_FLAG.usage,
            ),
            GoHelpRow::Version => (
                VERSION_FLAG.short,
                VERSION_FLAG.long,
                VERSION_FLAG.kind,
                VERSION_FLAG.usage,
            ),
        };
        out.push_str(&help_line(short, long, kind, usage));
    }
    out.push_str("\t-h\t--help\t\tShow this screen\n");
    out.push_str("\nAdditional options:\n");
    for spec in OPTIONS.iter().filter(|s| s.short.is_none()) {
        out.push_str(&help_line("", spec.long, spec.kind, spec.usage));
    }
    out.push_str(
        "Every option can also be set in cfg.yaml or with an environment variable named \
         XRAY_ and the long flag in upper case (--log-level: XRAY_LOG_LEVEL).\n",
    );
    out.push_str("\nCommands:\n");
    out.push_str(&format!(
        "\t{HEALTHCHECK} [--url URL]\tExit 0 if URL (default {DEFAULT_HEALTHCHECK_URL}) reports ready, else 1.\n"
    ));
    out
}

/// One help line in the Go layout: `\t-s\t--long\tusage`, with the Go daemon's extra tab after
/// string flags whose long name has at most four characters.
fn help_line(short: &str, long: &str, kind: Kind, usage: &str) -> String {
    let dash = if short.is_empty() { "" } else { "-" };
    let gap = if kind == Kind::String && long.len() <= 4 {
        "\t\t"
    } else {
        "\t"
    };
    format!("\t{dash}{short}\t--{long}{gap}{usage}\n")
}

/// What `-v` prints (followed by a newline).
pub fn version_line(version: &str) -> String {
    format!("AWS X-Ray daemon version: {version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn run(pairs: &[(OptionId, &str, &str)], config: Option<&str>) -> Command {
        let mut flags = Flags::default();
        for (id, flag, value) in pairs {
            flags.set(*id, *flag, *value);
        }
        flags.config = config.map(PathBuf::from);
        Command::Run(flags)
    }

    #[test]
    fn flag_table() {
        use OptionId::*;
        let ok: Vec<(&str, Command)> = vec![
            ("", run(&[], None)),
            ("-n us-west-2", run(&[(Region, "-n", "us-west-2")], None)),
            ("-n=us-west-2", run(&[(Region, "-n", "us-west-2")], None)),
            ("--n us-west-2", run(&[(Region, "--n", "us-west-2")], None)),
            (
                "--region=eu-west-1",
                run(&[(Region, "--region", "eu-west-1")], None),
            ),
            (
                "-region eu-west-1",
                run(&[(Region, "-region", "eu-west-1")], None),
            ),
            ("-o", run(&[(LocalMode, "-o", "true")], None)),
            ("-o=false", run(&[(LocalMode, "-o", "false")], None)),
            (
                "--local-mode=0",
                run(&[(LocalMode, "--local-mode", "0")], None),
            ),
            // `-o false`: `false` is the first positional, so `-n` is never seen.
            ("-o false -n x", run(&[(LocalMode, "-o", "true")], None)),
            ("-m 0x10", run(&[(TotalBufferSizeMb, "-m", "0x10")], None)),
            (
                "-m 5 --buffer-memory 7",
                run(&[(TotalBufferSizeMb, "--buffer-memory", "7")], None),
            ),
            ("-n a -- -n b", run(&[(Region, "-n", "a")], None)),
            ("-n a - -n b", run(&[(Region, "-n", "a")], None)),
            ("-n a extra -n b", run(&[(Region, "-n", "a")], None)),
            ("-n -o", run(&[(Region, "-n", "-o")], None)),
            ("-b=a=b", run(&[(UdpAddress, "-b", "a=b")], None)),
            ("-c /etc/x.yaml", run(&[], Some("/etc/x.yaml"))),
            ("--config=/a -c /b", run(&[], Some("/b"))),
            ("-c=", run(&[], None)),
            (
                "--shutdown-timeout 1m30s --concurrency=4",
                run(
                    &[
                        (ShutdownTimeout, "--shutdown-timeout", "1m30s"),
                        (Concurrency, "--concurrency", "4"),
                    ],
                    None,
                ),
            ),
            (
                "--admin-enable-lifecycle --no-verify-ssl=true",
                run(
                    &[
                        (AdminEnableLifecycle, "--admin-enable-lifecycle", "true"),
                        (NoVerifySsl, "--no-verify-ssl", "true"),
                    ],
                    None,
                ),
            ),
            ("-h", Command::Help),
            ("-help", Command::Help),
            ("--help", Command::Help),
            ("-n x -h -bogus", Command::Help),
            ("-v", Command::Version(Flags::default())),
            ("-version=false", run(&[], None)),
            (
                "-c f.yaml -v",
                Command::Version(Flags {
                    options: vec![],
                    config: Some(PathBuf::from("f.yaml")),
                }),
            ),
            (
                "healthcheck",
                Command::Healthcheck {
                    url: DEFAULT_HEALTHCHECK_URL.into(),
                },
            ),
            (
                "healthcheck --url http://10.0.0.1:2100/readyz",
                Command::Healthcheck {
                    url: "http://10.0.0.1:2100/readyz".into(),
                },
            ),
            (
                "healthcheck -url=http://x/readyz",
                Command::Healthcheck {
                    url: "http://x/readyz".into(),
                },
            ),
            ("healthcheck -h", Command::Help),
        ];
        for (line, want) in ok {
            assert_eq!(parse(&args(line)), Ok(want), "{line:?}");
        }

        let errors = [
            ("-x", "flag provided but not defined: -x"),
            ("--bogus=1", "flag provided but not defined: -bogus"),
            ("-m abc", "invalid value \"abc\" for flag -m: parse error"),
            (
                "--buffer-memory=1.5",
                "invalid value \"1.5\" for flag -buffer-memory: parse error",
            ),
            (
                "-m 99999999999999999999",
                "invalid value \"99999999999999999999\" for flag -m: value out of range",
            ),
            (
                "--shutdown-timeout soon",
                "invalid value \"soon\" for flag -shutdown-timeout: parse error",
            ),
            ("-o=x", "invalid boolean value \"x\" for -o: parse error"),
            (
                "--local-mode=yes",
                "invalid boolean value \"yes\" for -local-mode: parse error",
            ),
            ("-n", "flag needs an argument: -n"),
            ("-m 5 --region", "flag needs an argument: -region"),
            ("---x", "bad flag syntax: ---x"),
            ("-=x", "bad flag syntax: -=x"),
            ("--=", "bad flag syntax: --="),
            (
                "healthcheck --port 1",
                "flag provided but not defined: -port",
            ),
            ("healthcheck --url", "flag needs an argument: -url"),
        ];
        for (line, want) in errors {
            let err = parse(&args(line)).unwrap_err();
            assert_eq!(err.to_string(), want, "{line:?}");
            assert_eq!(err.exit_code(), 2);
        }
    }

    #[test]
    fn values_are_go_quoted_in_errors() {
        let err = parse(&["-m".to_string(), "a\"b\n\u{1}é".to_string()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value \"a\\\"b\\n\\x01é\" for flag -m: parse error"
        );
    }

    #[test]
    fn usage_starts_with_the_go_text_byte_for_byte() {
        let go = "Usage: X-Ray [options]
\t-a\t--resource-arn\tAmazon Resource Name (ARN) of the AWS resource running the daemon.
\t-o\t--local-mode\tDon't check for EC2 instance metadata.
\t-m\t--buffer-memory\tChange the amount of memory in MB that buffers can use (minimum 3).
\t-n\t--region\tSend segments to X-Ray service in a specific region.
\t-b\t--bind\t\tOverrides default UDP address (127.0.0.1:2000).
\t-t\t--bind-tcp\tOverrides default TCP address (127.0.0.1:2000).
\t-r\t--role-arn\tAssume the specified IAM role to upload segments to a different account.
\t-c\t--config\tLoad a configuration file from the specified path.
\t-f\t--log-file\tOutput logs to the specified file path.
\t-l\t--log-level\tLog level, from most verbose to least: dev, debug, info, warn, error, prod (default).
\t-p\t--proxy-address\tProxy address through which to upload segments.
\t-v\t--version\tShow AWS X-Ray daemon version.
\t-h\t--help\t\tShow this screen
";
        let text = usage();
        assert!(text.starts_with(go), "{text}");
        let rest = &text[go.len()..];
        assert!(rest.starts_with("\nAdditional options:\n\t\t--concurrency\t"));
        for spec in OPTIONS.iter().filter(|s| s.short.is_none()) {
            assert!(
                rest.contains(&format!("\t\t--{}\t", spec.long)),
                "{}",
                spec.long
            );
        }
        assert!(rest.contains("\thealthcheck [--url URL]\t"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn version_text() {
        assert_eq!(version_line("3.6.6"), "AWS X-Ray daemon version: 3.6.6");
    }
}
