//! `call-control-cli`: list, show and end the sessions of a running
//! `call-control` (or of the original daemon: same socket, same protocol).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use callcontrol_bin::client::{self, ClientError};
use callcontrol_bin::config::{self, Config};
use callcontrol_opensips::codec::ClientReply;

const AFTER_HELP: &str = "\
OUTPUT:
    By default the daemon's answer is printed as it comes (the original CLI's format, so scripts
    that read it keep working):
        list       Call id <callid> of <user> to <ruri>: <pending|in-progress> [limit, elapsed, remaining]
        show       <key>: <value>, one line per session field
        terminate  Ok
    With --json: list prints an array of {call_id, user, ruri, state, limit, elapsed, remaining};
    show an object of the session's fields; terminate {\"terminated\": <callid>}.

EXIT STATUS:
    0  done
    1  the daemon answered that it could not: no such call, or Error
    2  could not talk to the daemon (not running, no answer within --timeout, unreadable
       reply), or a bad command line

EXAMPLES:
    call-control-cli list
    call-control-cli list alice@example.com --json
    call-control-cli show 1-1469@127.0.0.1
    call-control-cli --runtime-dir /tmp/cc terminate 1-1469@127.0.0.1";

/// Command line tool for call-control.
#[derive(Debug, Parser)]
#[command(
    name = "call-control-cli",
    version,
    about = "Lists, shows and terminates the sessions of a running call-control",
    long_about = "Issues commands to a running call-control daemon over its UNIX socket \
                  (<runtime dir>/socket), with the admin protocol of the original Call Control, \
                  so it also works against the original daemon. It never waits longer than \
                  --timeout.",
    after_help = AFTER_HELP
)]
struct Cli {
    /// The daemon's runtime directory (its socket is <DIR>/socket)
    #[arg(long, value_name = "DIR", default_value = config::DEFAULT_RUNTIME_DIR, global = true)]
    runtime_dir: PathBuf,
    /// The daemon's socket (overrides --runtime-dir)
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print JSON instead of the daemon's text
    #[arg(long, global = true)]
    json: bool,
    /// Give up after this many seconds (a number > 0)
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 5.0,
        global = true,
        value_parser = parse_timeout,
        allow_negative_numbers = true
    )]
    timeout: f64,
    /// Directory holding config.ini (for `balance`, which uses [Web])
    #[arg(long, value_name = "DIR", global = true)]
    config_dir: Option<PathBuf>,
    /// config.ini to read (for `balance`)
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the sessions, optionally only those of users starting with USER
    List {
        /// user@domain (or a prefix of it)
        user: Option<String>,
    },
    /// Show every field of one session
    Show {
        /// The session's SIP Call-ID
        call_id: String,
    },
    /// End a session now (BYE to both ends; the elapsed time is debited)
    Terminate {
        /// The session's SIP Call-ID
        call_id: String,
    },
    /// Show a prepaid account's balance, or add credit (needs [Web] port in config.ini)
    Balance {
        /// The account, user@domain
        account: String,
        /// Credit to add, a decimal amount such as 10.50
        #[arg(long, value_name = "AMOUNT")]
        add: Option<String>,
        /// Also show the balance history
        #[arg(long)]
        history: bool,
    },
}

/// `--timeout`: a finite number of seconds greater than 0 (a bad value is a
/// usage error, exit status 2).
fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err(format!(
            "{s:?} is not a usable timeout: give a number of seconds greater than 0"
        )),
        Err(e) => Err(format!("{s:?} is not a number of seconds: {e}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let timeout = Duration::from_secs_f64(cli.timeout.clamp(0.1, 3600.0));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("call-control-cli: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async_main(cli, timeout))
}

async fn async_main(cli: Cli, timeout: Duration) -> ExitCode {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| cli.runtime_dir.join("socket"));
    let request = match &cli.command {
        Command::List { user } => client::list(user.as_deref()),
        Command::Show { call_id } => client::show(call_id),
        Command::Terminate { call_id } => client::terminate(call_id),
        Command::Balance {
            account,
            add,
            history,
        } => return balance(&cli, account, add, *history).await,
    };
    let answer = match client::send(&socket, &request, timeout).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("call-control-cli: {e}");
            if matches!(e, ClientError::NotRunning { .. }) {
                eprintln!(
                    "call-control-cli: is the daemon running? (check --runtime-dir or --socket)"
                );
            }
            return ExitCode::from(2);
        }
    };
    let (json, code) = match &answer.reply {
        ClientReply::Sessions(rows) => (serde_json::to_value(rows), 0),
        ClientReply::Session(fields) => (
            Ok(serde_json::Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                    .collect(),
            )),
            0,
        ),
        ClientReply::Terminated => {
            let id = match &cli.command {
                Command::Terminate { call_id } => call_id.clone(),
                _ => String::new(),
            };
            (Ok(serde_json::json!({ "terminated": id })), 0)
        }
        ClientReply::NoSuchCall(id) => {
            eprintln!("call-control-cli: call id {id} does not exist");
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "error": "not found", "call_id": id })
                );
            } else {
                println!("{}", answer.text);
            }
            return ExitCode::from(1);
        }
        ClientReply::Error => {
            eprintln!("call-control-cli: the daemon answered Error");
            return ExitCode::from(1);
        }
        other => {
            eprintln!("call-control-cli: unexpected reply {other:?}");
            return ExitCode::from(2);
        }
    };
    if cli.json {
        match json.and_then(|j| serde_json::to_string_pretty(&j)) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("call-control-cli: {e}");
                return ExitCode::from(2);
            }
        }
    } else if !answer.text.is_empty() {
        println!("{}", answer.text);
    }
    ExitCode::from(code)
}

async fn balance(cli: &Cli, account: &str, add: &Option<String>, history: bool) -> ExitCode {
    let config = config::locate(cli.config.as_deref(), cli.config_dir.as_deref())
        .and_then(|p| p.map_or_else(|| Ok(Config::default()), |p| Config::load(&p)));
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("call-control-cli: {e}");
            return ExitCode::from(2);
        }
    };
    let args = callcontrol_bin::web::BalanceArgs {
        account: account.to_string(),
        add: add.clone(),
        history,
    };
    match callcontrol_bin::web::balance_command(&config.web, &args).await {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("call-control-cli: {e}");
            ExitCode::from(2)
        }
    }
}
