//! `nimbus`: run the platform, run one of its services, or drive it from the shell.

mod args;
mod commands;
mod tools;

use clap::{CommandFactory as _, Parser};
use nimbus::cli::Client;
use nimbus_core::config::LogFormat;

use self::args::{Args, Cmd};

/// mimalloc: per-thread free lists, so the many small allocations of a request
/// (headers, futures, SQL text, protobuf) cost less than glibc's malloc, whose
/// arenas the profile of `bench create` showed at a tenth of the CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use self::commands::client_command;
use nimbus::output::print;

fn main() {
    // Inside a sandbox, as its first process: no runtime, no threads beyond init's own.
    if std::env::args().nth(1).as_deref() == Some(nimbus::SANDBOX_INIT_ARG) {
        nimbus::sandbox_init::run(std::env::args().skip(2));
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            nimbus::cli::exit_code(&e)
        }
    };
    std::process::exit(code);
}

/// Lines between two rules as wide as the widest, so they stand out among log lines.
fn ruled(lines: &[String]) -> String {
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let rule = "─".repeat(width);
    format!("{rule}\n{}\n{rule}", lines.join("\n"))
}

/// `nimbus up`'s log format: `NIMBUS_LOG__FORMAT`, as the configuration key.
fn up_log_format() -> anyhow::Result<LogFormat> {
    match std::env::var("NIMBUS_LOG__FORMAT").as_deref() {
        Err(_) | Ok("text") => Ok(LogFormat::Text),
        Ok("json") => Ok(LogFormat::Json),
        Ok(other) => anyhow::bail!("NIMBUS_LOG__FORMAT must be text or json, not '{other}'"),
    }
}

/// `nimbus man`: nimbus(1) on stdout, or a page per command into `dir`.
fn man(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let cmd = Args::command();
    match dir {
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("making {}", d.display()))?;
            clap_mangen::generate_to(cmd, d)
                .with_context(|| format!("writing man pages into {}", d.display()))?;
        }
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    // `usage` also prints CSV; every other command takes table, json or yaml.
    let usage_output = match (&args.cmd, args.output.as_deref()) {
        (Cmd::Usage { .. }, Some("csv")) => Some("csv".to_string()),
        _ => None,
    };
    if usage_output.is_none() {
        nimbus::output::set_format(
            nimbus::output::Format::pick(args.output.as_deref())?,
            args.output.is_some(),
        );
    }
    match args.cmd {
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Args::command(),
                "nimbus",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man { dir } => man(dir.as_deref()),
        Cmd::Replay {
            trace,
            policies,
            per_function,
            json,
            live,
            speedup,
            functions,
            from_minute,
            minutes,
            max_in_flight,
            max_per_minute,
            prefix,
            keep,
        } => {
            let policies = policies
                .iter()
                .map(|p| {
                    p.parse::<keepalive::predictor::Policy>()
                        .map_err(anyhow::Error::msg)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if live {
                nimbus_core::model::validate_name("--prefix", &prefix)?;
                let c = Client::resolve(args.url, args.token)?;
                let report = nimbus::replay::live(
                    &c,
                    nimbus::replay::LiveReplay {
                        trace,
                        speedup,
                        functions,
                        from_minute,
                        minutes,
                        max_in_flight,
                        max_per_minute,
                        prefix,
                        keep,
                    },
                    &policies,
                )
                .await?;
                print(&report);
                return Ok(());
            }
            let report = nimbus::replay::offline(&trace, &policies, per_function)?;
            if json {
                print(&report);
            } else {
                println!(
                    "{:<12} {:>9} {:>12} {:>11} {:>10} {:>16} {:>16}",
                    "policy",
                    "functions",
                    "invocations",
                    "cold",
                    "cold rate",
                    "idle inst-s",
                    "idle MB-s"
                );
                for r in report.as_array().into_iter().flatten() {
                    println!(
                        "{:<12} {:>9} {:>12} {:>11} {:>9.3}% {:>16.0} {:>16.0}",
                        r["policy"].as_str().unwrap_or(""),
                        r["functions"].as_u64().unwrap_or(0),
                        r["invocations"].as_u64().unwrap_or(0),
                        r["cold_starts"].as_u64().unwrap_or(0),
                        r["cold_start_rate"].as_f64().unwrap_or(0.0) * 100.0,
                        r["idle_instance_seconds"].as_f64().unwrap_or(0.0),
                        r["idle_mb_seconds"].as_f64().unwrap_or(0.0),
                    );
                }
            }
            Ok(())
        }
        Cmd::Up { data_dir, listen } => {
            let telemetry = nimbus::telemetry::init(
                up_log_format()?,
                "nimbus",
                &nimbus_core::config::TraceConfig::default(),
            )?;
            let data_dir = data_dir.unwrap_or_else(nimbus::default_data_dir);
            let p = nimbus::Platform::start(nimbus::UpOptions {
                data_dir: data_dir.clone(),
                listen,
                bus: None,
                // `NIMBUS_SECTION__KEY` variables, as for every service.
                overrides: std::env::vars().collect(),
            })
            .await?;
            let key_file = data_dir.join("admin.key");
            // Each line as it always read (scripts read them), between rules that
            // set them apart from the log lines around them.
            let mut lines = vec![format!("Nimbus is up at {}", p.url)];
            lines.push(match &p.admin_key {
                Some(k) => format!(
                    "admin key (shown once; also in {}): {k}",
                    key_file.display()
                ),
                None => format!("admin key: see {}", key_file.display()),
            });
            lines.push(format!(
                "try: export NIMBUS_URL={} NIMBUS_TOKEN=$(cat {})",
                p.url,
                key_file.display()
            ));
            println!("{}", ruled(&lines));
            let r = p.wait(nimbus::signal()).await;
            telemetry.shutdown().await;
            r
        }
        Cmd::Serve { service, config } => {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", config.display()))?;
            let cfg = nimbus_core::config::Config::load(&text, std::env::vars())?;
            let telemetry =
                nimbus::telemetry::init(cfg.log.format, &format!("nimbus-{service}"), &cfg.trace)?;
            let grace = cfg.shutdown.grace();
            let (trigger, sd) = nimbus_core::shutdown::channel();
            let mut svc = tokio::spawn(async move { nimbus::serve(&service, cfg, sd).await });
            let r = tokio::select! {
                r = &mut svc => Some(r),
                _ = nimbus::signal() => { trigger.fire(); None }
            };
            let r = match r {
                Some(r) => r?,
                // Stopped accepting; what is in flight finishes within the grace
                // period (each service bounds its own drain by it; this is the
                // backstop).
                None => match tokio::time::timeout(grace + std::time::Duration::from_secs(5), svc)
                    .await
                {
                    Ok(r) => r?,
                    Err(_) => Err(anyhow::anyhow!(
                        "still stopping {}s after the signal",
                        grace.as_secs() + 5
                    )),
                },
            };
            telemetry.shutdown().await;
            r
        }
        cmd => {
            let mut c = Client::resolve(args.url, args.token)?;
            if let Some(region) = &args.region {
                c = c.in_region(region).await?;
            }
            client_command(&c, cmd, usage_output).await
        }
    }
}
