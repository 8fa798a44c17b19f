//! Structured logs with tracing: human-readable by default, JSON on request.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. The filter is, first found: `flag`
/// (`--log-level` / `FERRY_LOG_LEVEL`), `RUST_LOG`, then `config_level`
/// (`log.level`). One that does not parse is an error naming where it came
/// from, never a silent fallback.
pub fn init(format: LogFormat, flag: Option<&str>, config_level: &str) -> Result<(), String> {
    let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (origin, text) = match (flag, rust_log.as_deref()) {
        (Some(flag), _) => ("--log-level", flag),
        (None, Some(env)) => ("RUST_LOG", env),
        (None, None) => ("log.level", config_level),
    };
    let filter = parse(origin, text)?;
    // Colour codes only for a person at a terminal; in a pipe, a file or a
    // log collector they are noise. `NO_COLOR` (no-color.org) turns them off.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // A second init (tests, quickstart after run) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    Ok(())
}

/// Checks a `--log-level` before anything runs, also for commands that log
/// nothing, so a typo is never silently ignored.
pub fn check_flag(text: &str) -> Result<(), String> {
    parse("--log-level", text).map(|_| ())
}

fn parse(origin: &str, text: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder().parse(text).map_err(|e| {
        format!(
            "{origin} `{text}` is not a log filter ({e}); use a level such as `info` or `debug`, or directives such as `ferry=debug,info`"
        )
    })
}
