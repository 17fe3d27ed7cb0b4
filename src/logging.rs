//! Where the daemon's log goes (`-o log=PATH|syslog`, stderr by default), filtered by
//! `RUST_LOG` or else `warn` (`debug` with `-d`). Set up before the daemon forks: a log file
//! is opened (appending) and the syslog socket is checked here, so that a bad target is one
//! error line from the launcher rather than a silent daemon.

use std::fmt::Write as _;
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogTarget;

/// Installs the process's logger for `target`; `debug` raises the default level to debug.
pub fn init(debug: bool, target: &LogTarget) -> Result<(), String> {
    // SIGUSR1's statistics table is logged at info under its own target: shown by default.
    let default = if debug {
        "debug".to_string()
    } else {
        format!("warn,{}=info", crate::daemon::STATS_TARGET)
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&default));
    let installed = match target {
        LogTarget::Stderr => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_target(false)
            .try_init(),
        LogTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .map_err(|e| {
                    format!(
                        "cannot open log file '{}': {}",
                        path.display(),
                        crate::config::os_error_text(&e)
                    )
                })?;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(Arc::new(file))
                .with_ansi(false)
                .with_target(false)
                .try_init()
        }
        LogTarget::Syslog => {
            // Checked now; the daemon connects again after it forks, so that its messages
            // carry its own pid.
            connect_syslog().map_err(|e| format!("cannot log to syslog: {e}"))?;
            tracing_subscriber::registry()
                .with(filter)
                .with(SyslogLayer {
                    logger: Mutex::new(None),
                })
                .try_init()
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        }
    };
    // A logger already installed (tests that call this twice) is no error.
    let _ = installed;
    Ok(())
}

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

fn connect_syslog() -> Result<Syslog, syslog::Error> {
    syslog::unix(syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "stratafs".into(),
        pid: std::process::id(),
    })
}

/// Sends each event to the local syslog socket, at the matching severity.
struct SyslogLayer {
    /// Connected at the first event in this process (so after the daemon's fork).
    logger: Mutex<Option<(u32, Syslog)>>,
}

/// Collects an event's message and fields into one line.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = if field.name() == "message" {
            write!(self.0, "{value:?}")
        } else {
            write!(self.0, "{}={value:?}", field.name())
        };
    }
}

impl<S: Subscriber> Layer<S> for SyslogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let mut guard = self.logger.lock();
        let pid = std::process::id();
        if guard.as_ref().is_none_or(|(p, _)| *p != pid) {
            *guard = connect_syslog().ok().map(|l| (pid, l));
        }
        if let Some((_, logger)) = guard.as_mut() {
            let msg = line.0;
            let _ = match *event.metadata().level() {
                Level::ERROR => logger.err(msg),
                Level::WARN => logger.warning(msg),
                Level::INFO => logger.info(msg),
                _ => logger.debug(msg),
            };
        }
    }
}
