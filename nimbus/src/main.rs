//! `nimbus`: run the platform, run one of its services, or drive it from the shell.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use nimbus::cli::{self, Client, Deploy};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "nimbus", version, about = "Nimbus serverless platform")]
struct Args {
    /// API base URL (else NIMBUS_URL, else the config file, else http://127.0.0.1:8080).
    #[arg(long, global = true)]
    url: Option<String>,
    /// API key or JWT (else NIMBUS_TOKEN, else the config file).
    #[arg(long, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every service in this process: SQLite, in-process bus, local object store.
    Up {
        /// Where data lives (default: $NIMBUS_DATA_DIR or ./nimbus-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address of the REST API.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run one service as its own process (distributed mode).
    Serve {
        /// api-gateway, workflow, code, resource, network or node.
        service: String,
        /// TOML config; NIMBUS_SECTION__KEY variables override it.
        #[arg(long)]
        config: PathBuf,
    },
    /// Functions.
    #[command(subcommand, name = "fn")]
    Function(FnCmd),
    /// Aliases.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Triggers: http routes and timers.
    #[command(subcommand)]
    Trigger(TriggerCmd),
    /// Asynchronous invocations and dead letters.
    #[command(subcommand)]
    Invocation(InvocationCmd),
    /// Tasks.
    #[command(subcommand)]
    Task(TaskCmd),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Tenants (admin).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Load tests against a running Nimbus.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Replay a trace (Azure Functions 2019 format) offline under keep-alive policies:
    /// cold starts against idle instance-time.
    Replay {
        /// The trace directory (invocations.csv, durations.csv, memory.csv).
        #[arg(long)]
        trace: PathBuf,
        /// A policy: none, fixed:10m (any duration), hybrid. Repeat to compare.
        #[arg(long = "policy", default_values_t = ["none".to_string(), "fixed:10m".to_string(), "hybrid".to_string()])]
        policies: Vec<String>,
        /// Add each function's numbers.
        #[arg(long)]
        per_function: bool,
        /// JSON output (the default prints a table).
        #[arg(long)]
        json: bool,
        /// Send the calls to a running Nimbus (--url, --token) instead: one sleeping
        /// noop function per trace function, cold starts read from the responses.
        #[arg(long)]
        live: bool,
        /// Live: trace time runs this many times faster (durations too).
        #[arg(long, default_value_t = 60.0, requires = "live")]
        speedup: f64,
        /// Live: how many functions, picked evenly from the fewest calls to the most.
        #[arg(long, default_value_t = 20, requires = "live")]
        functions: usize,
        /// Live: the first trace minute.
        #[arg(long, default_value_t = 0, requires = "live")]
        from_minute: usize,
        /// Live: trace minutes to replay.
        #[arg(long, default_value_t = 60, requires = "live")]
        minutes: usize,
        /// Live: most calls in flight.
        #[arg(long, default_value_t = 256, requires = "live")]
        max_in_flight: usize,
        /// Live: leave out functions with a minute of more calls than this.
        #[arg(long, default_value_t = 1000, requires = "live")]
        max_per_minute: u32,
        /// Live: the functions' name prefix.
        #[arg(long, default_value = "replay", requires = "live")]
        prefix: String,
        /// Live: keep the functions afterwards.
        #[arg(long, requires = "live")]
        keep: bool,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Create → Active latency and tasks per second (needs a developer or owner key).
    Create {
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Keep the functions afterwards.
        #[arg(long)]
        keep: bool,
    },
    /// Invocation latency and throughput of one function.
    Invoke {
        name: String,
        #[command(flatten)]
        load: LoadArgs,
        /// A version or an alias.
        #[arg(long)]
        qualifier: Option<String>,
        /// Send the load to this path instead (e.g. an http trigger: /t/TENANT/PATH).
        #[arg(long)]
        target: Option<String>,
    },
    /// Queue events asynchronously and wait for all of them: accept latency, drain
    /// rate, enqueue → start latency.
    Async {
        name: String,
        /// Events to queue.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Senders at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// The same load against a bare loopback HTTP endpoint: the floor.
    Floor {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// The wasm runtime's cold start, in this process: a module precompiled on disk
    /// but not in memory (code cached on the node), against one already loaded.
    Wasm {
        /// A WASI command module (.wasm).
        module: PathBuf,
        /// Calls of each kind.
        #[arg(long, default_value_t = 200)]
        iterations: usize,
    },
    /// Code fetch time from each cache tier, in this process with the node's code
    /// cache and a zone cache on loopback: object storage, zone cache (miss and hit),
    /// node-local.
    CodeFetch {
        /// Size of each package's content, KiB (random bytes).
        #[arg(long, default_value_t = 1024)]
        size_kb: usize,
        /// Packages fetched per tier.
        #[arg(long, default_value_t = 30)]
        iterations: usize,
        /// An S3-compatible endpoint for object storage (default: a local directory).
        #[arg(long, requires = "bucket")]
        s3_endpoint: Option<String>,
        /// The bucket (created if missing).
        #[arg(long)]
        bucket: Option<String>,
        /// S3 access key.
        #[arg(long, env = "AWS_ACCESS_KEY_ID")]
        access_key: Option<String>,
        /// S3 secret key.
        #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
        secret_key: Option<String>,
    },
}

#[derive(clap::Args)]
struct LoadArgs {
    /// Open loop: requests per second.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<u32>,
    /// Closed loop: callers in parallel (default 1).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// The event file (default: {}).
    #[arg(long)]
    payload: Option<PathBuf>,
    /// Only the JSON report, no progress line.
    #[arg(long)]
    json: bool,
}

impl LoadArgs {
    fn options(
        &self,
        url: String,
        token: Option<String>,
    ) -> anyhow::Result<nimbus::bench::LoadOptions> {
        let payload = match &self.payload {
            Some(p) => {
                std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?
            }
            None => b"{}".to_vec(),
        };
        anyhow::ensure!(self.duration > 0.0, "--duration must be positive");
        Ok(nimbus::bench::LoadOptions {
            url,
            token,
            payload,
            load: match (self.rate, self.concurrency) {
                (Some(r), _) => nimbus::bench::Load::Rate(r),
                (None, c) => nimbus::bench::Load::Concurrency(c.unwrap_or(1)),
            },
            duration: std::time::Duration::from_secs_f64(self.duration),
            progress: !self.json,
        })
    }
}

#[derive(Subcommand)]
enum FnCmd {
    /// Zip DIR and create the function, or update it; wait for the task.
    Deploy {
        dir: PathBuf,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        runtime: String,
        #[arg(long)]
        handler: String,
        #[arg(long)]
        memory: Option<u32>,
        #[arg(long)]
        timeout: Option<u32>,
        /// K=V, repeatable.
        #[arg(long)]
        env: Vec<String>,
        /// Return after the API accepted the change.
        #[arg(long)]
        no_wait: bool,
    },
    /// List functions.
    List,
    /// Show one function.
    Get { name: String },
    /// Delete a function and wait.
    Delete {
        name: String,
        #[arg(long)]
        no_wait: bool,
    },
    /// Publish $LATEST as the next version and wait.
    Publish {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List versions.
    Versions { name: String },
    /// Invoke synchronously and print the result.
    Invoke {
        name: String,
        /// The event (JSON); default {}.
        #[arg(long, default_value = "{}")]
        data: String,
        /// A version or an alias.
        #[arg(long)]
        qualifier: Option<String>,
        /// Queue the event and return its invocation id at once.
        #[arg(long = "async")]
        queued: bool,
    },
    /// Print the function's recent log lines.
    Logs {
        name: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Create or move an alias: `alias set FUNCTION ALIAS --version N [--weight V=W]`.
    Set {
        function: String,
        alias: String,
        #[arg(long)]
        version: String,
        /// Extra version and its weight, e.g. 3=0.1.
        #[arg(long)]
        weight: Vec<String>,
    },
    /// List a function's aliases.
    List { function: String },
    /// Delete an alias.
    Delete { function: String, alias: String },
}

#[derive(Subcommand)]
enum TriggerCmd {
    /// Add a trigger: `--type http --path /hello [--method GET]… [--public]`,
    /// `--type timer --cron "*/5 * * * * *"`, `--type queue --queue orders`, or
    /// `--type storage --bucket uploads [--event put]… [--prefix P] [--suffix S]`.
    Add {
        function: String,
        #[arg(long = "type")]
        kind: String,
        /// http: the route, served at /t/TENANT/PATH.
        #[arg(long)]
        path: Option<String>,
        /// http: an allowed method (repeat; default GET and POST).
        #[arg(long = "method")]
        methods: Vec<String>,
        /// http: no API key needed.
        #[arg(long)]
        public: bool,
        /// timer: a cron pattern, seconds first when 6 fields.
        #[arg(long)]
        cron: Option<String>,
        /// queue: the tenant queue to consume.
        #[arg(long)]
        queue: Option<String>,
        /// storage: the bucket.
        #[arg(long)]
        bucket: Option<String>,
        /// storage: put or delete (repeat; default put).
        #[arg(long = "event")]
        events: Vec<String>,
        /// storage: only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// storage: only keys ending with this.
        #[arg(long)]
        suffix: Option<String>,
    },
    /// List a function's triggers.
    List { function: String },
    /// Delete a trigger.
    Delete { function: String, id: String },
}

#[derive(Subcommand)]
enum InvocationCmd {
    /// Show an asynchronous invocation: state, attempts, result, errors.
    Get { id: String },
    /// List a function's dead letters.
    DeadLetters { function: String },
    /// Run a dead letter again.
    Replay { id: String },
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Show a task.
    Get { id: String },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a key; the key is printed once.
    Create {
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List keys.
    List,
    /// Revoke a key.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant; prints its owner key once.
    Create { name: String },
    /// List tenants.
    List,
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

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
            1
        }
    };
    std::process::exit(code);
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIMBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,lapin=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.cmd {
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
                    p.parse::<invoker::predictor::Policy>()
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
            init_tracing();
            let data_dir = data_dir.unwrap_or_else(nimbus::default_data_dir);
            let p = nimbus::Platform::start(nimbus::UpOptions {
                data_dir: data_dir.clone(),
                listen,
                bus: None,
                // `NIMBUS_SECTION__KEY` variables, as for every service.
                overrides: std::env::vars().collect(),
            })
            .await?;
            println!("Nimbus is up at {}", p.url);
            match &p.admin_key {
                Some(k) => println!(
                    "admin key (shown once; also in {}): {k}",
                    data_dir.join("admin.key").display()
                ),
                None => println!("admin key: see {}", data_dir.join("admin.key").display()),
            }
            p.wait(nimbus::signal()).await
        }
        Cmd::Serve { service, config } => {
            init_tracing();
            let text = std::fs::read_to_string(&config)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", config.display()))?;
            let cfg = nimbus_core::config::Config::load(&text, std::env::vars())?;
            let (trigger, sd) = nimbus_core::shutdown::channel();
            let svc = tokio::spawn(async move { nimbus::serve(&service, cfg, sd).await });
            tokio::select! {
                r = svc => r??,
                _ = nimbus::signal() => {
                    trigger.fire();
                }
            }
            Ok(())
        }
        cmd => {
            let c = Client::resolve(args.url, args.token)?;
            client_command(&c, cmd).await
        }
    }
}

async fn client_command(c: &Client, cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Function(f) => match f {
            FnCmd::Deploy {
                dir,
                name,
                runtime,
                handler,
                memory,
                timeout,
                env,
                no_wait,
            } => {
                let v = cli::deploy(
                    c,
                    Deploy {
                        dir,
                        name,
                        runtime,
                        handler,
                        memory_mb: memory,
                        timeout_ms: timeout,
                        env,
                        no_wait,
                    },
                )
                .await?;
                print(&v);
            }
            FnCmd::List => print(&c.call(Method::GET, "/v1/functions", None).await?.1),
            FnCmd::Get { name } => print(
                &c.call(Method::GET, &format!("/v1/functions/{name}"), None)
                    .await?
                    .1,
            ),
            FnCmd::Delete { name, no_wait } => {
                let (_, r) = c
                    .call(Method::DELETE, &format!("/v1/functions/{name}"), None)
                    .await?;
                let id = r["task_id"].as_str().unwrap_or_default().to_string();
                if !no_wait {
                    c.wait_task(&id, "deleting").await?;
                }
                print(&json!({"deleted": name, "task_id": id}));
            }
            FnCmd::Publish { name, description } => {
                let (_, r) = c
                    .call(
                        Method::POST,
                        &format!("/v1/functions/{name}/versions"),
                        Some(json!({"description": description})),
                    )
                    .await?;
                let t = c
                    .wait_task(r["task_id"].as_str().unwrap_or_default(), "publishing")
                    .await?;
                print(&json!({"function": name, "version": t["result"]["version"]}));
            }
            FnCmd::Invoke {
                name,
                data,
                qualifier,
                queued,
            } => {
                let event: Value = serde_json::from_str(&data)
                    .map_err(|e| anyhow::anyhow!("--data is not JSON: {e}"))?;
                let q = qualifier
                    .map(|q| format!("?qualifier={q}"))
                    .unwrap_or_default();
                let kind = if queued { "async" } else { "sync" };
                let (_, v) = c
                    .call_with(
                        Method::POST,
                        &format!("/v1/functions/{name}/invoke{q}"),
                        Some(event),
                        &[("x-nimbus-invocation-type", kind)],
                    )
                    .await?;
                print(&v);
            }
            FnCmd::Logs { name, limit } => {
                let (_, v) = c
                    .call(
                        Method::GET,
                        &format!("/v1/functions/{name}/logs?limit={limit}"),
                        None,
                    )
                    .await?;
                for l in v["lines"].as_array().into_iter().flatten() {
                    println!(
                        "{} {} [{}] {}",
                        l["timestamp"].as_str().unwrap_or(""),
                        l["request_id"].as_str().unwrap_or(""),
                        l["stream"].as_str().unwrap_or(""),
                        l["message"].as_str().unwrap_or("")
                    );
                }
            }
            FnCmd::Versions { name } => print(
                &c.call(Method::GET, &format!("/v1/functions/{name}/versions"), None)
                    .await?
                    .1,
            ),
        },
        Cmd::Alias(a) => match a {
            AliasCmd::Set {
                function,
                alias,
                version,
                weight,
            } => {
                let mut weights = serde_json::Map::new();
                for w in weight {
                    let (v, x) = w
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("--weight {w}: expected VERSION=WEIGHT"))?;
                    let x: f64 = x.parse().map_err(|_| {
                        anyhow::anyhow!("--weight {w}: the weight must be a number")
                    })?;
                    weights.insert(v.to_string(), json!(x));
                }
                let body = json!({"version": version, "additional_version_weights": weights});
                print(
                    &c.call(
                        Method::PUT,
                        &format!("/v1/functions/{function}/aliases/{alias}"),
                        Some(body),
                    )
                    .await?
                    .1,
                );
            }
            AliasCmd::List { function } => print(
                &c.call(
                    Method::GET,
                    &format!("/v1/functions/{function}/aliases"),
                    None,
                )
                .await?
                .1,
            ),
            AliasCmd::Delete { function, alias } => {
                c.call(
                    Method::DELETE,
                    &format!("/v1/functions/{function}/aliases/{alias}"),
                    None,
                )
                .await?;
                print(&json!({"deleted": alias}));
            }
        },
        Cmd::Trigger(t) => match t {
            TriggerCmd::Add {
                function,
                kind,
                path,
                methods,
                public,
                cron,
                queue,
                bucket,
                events,
                prefix,
                suffix,
            } => {
                let mut body = json!({"type": kind});
                if let Some(p) = path {
                    body["path"] = json!(p);
                }
                if !methods.is_empty() {
                    body["methods"] = json!(methods);
                }
                if public {
                    body["auth"] = json!("none");
                }
                for (k, v) in [
                    ("cron", cron),
                    ("queue", queue),
                    ("bucket", bucket),
                    ("prefix", prefix),
                    ("suffix", suffix),
                ] {
                    if let Some(v) = v {
                        body[k] = json!(v);
                    }
                }
                if !events.is_empty() {
                    body["events"] = json!(events);
                }
                print(
                    &c.call(
                        Method::POST,
                        &format!("/v1/functions/{function}/triggers"),
                        Some(body),
                    )
                    .await?
                    .1,
                );
            }
            TriggerCmd::List { function } => print(
                &c.call(
                    Method::GET,
                    &format!("/v1/functions/{function}/triggers"),
                    None,
                )
                .await?
                .1,
            ),
            TriggerCmd::Delete { function, id } => {
                c.call(
                    Method::DELETE,
                    &format!("/v1/functions/{function}/triggers/{id}"),
                    None,
                )
                .await?;
                print(&json!({"deleted": id}));
            }
        },
        Cmd::Invocation(i) => match i {
            InvocationCmd::Get { id } => print(
                &c.call(Method::GET, &format!("/v1/invocations/{id}"), None)
                    .await?
                    .1,
            ),
            InvocationCmd::DeadLetters { function } => print(
                &c.call(
                    Method::GET,
                    &format!("/v1/functions/{function}/dead-letters"),
                    None,
                )
                .await?
                .1,
            ),
            InvocationCmd::Replay { id } => print(
                &c.call(
                    Method::POST,
                    &format!("/v1/dead-letters/{id}/replay"),
                    Some(json!({})),
                )
                .await?
                .1,
            ),
        },
        Cmd::Task(TaskCmd::Get { id }) => print(
            &c.call(Method::GET, &format!("/v1/tasks/{id}"), None)
                .await?
                .1,
        ),
        Cmd::Key(k) => match k {
            KeyCmd::Create { role, name, tenant } => {
                let mut body = json!({"role": role, "name": name});
                if let Some(t) = tenant {
                    body["tenant"] = json!(t);
                }
                print(&c.call(Method::POST, "/v1/api-keys", Some(body)).await?.1);
            }
            KeyCmd::List => print(&c.call(Method::GET, "/v1/api-keys", None).await?.1),
            KeyCmd::Revoke { id } => {
                c.call(Method::DELETE, &format!("/v1/api-keys/{id}"), None)
                    .await?;
                print(&json!({"revoked": id}));
            }
        },
        Cmd::Tenant(t) => match t {
            TenantCmd::Create { name } => print(
                &c.call(Method::POST, "/v1/tenants", Some(json!({"name": name})))
                    .await?
                    .1,
            ),
            TenantCmd::List => print(&c.call(Method::GET, "/v1/tenants", None).await?.1),
        },
        Cmd::Bench(BenchCmd::Create {
            count,
            concurrency,
            keep,
        }) => {
            let report = nimbus::bench::create(
                c,
                nimbus::bench::CreateBench {
                    count,
                    concurrency,
                    cleanup: !keep,
                },
            )
            .await?;
            print(&report);
        }
        Cmd::Bench(BenchCmd::Invoke {
            name,
            load,
            qualifier,
            target,
        }) => {
            let q = qualifier
                .map(|q| format!("?qualifier={q}"))
                .unwrap_or_default();
            let url = match target {
                Some(t) => format!("{}{t}", c.url),
                None => format!("{}/v1/functions/{name}/invoke{q}", c.url),
            };
            print(&nimbus::bench::load(load.options(url, c.token.clone())?).await?);
        }
        Cmd::Bench(BenchCmd::Async {
            name,
            count,
            concurrency,
        }) => print(
            &nimbus::bench::async_drain(
                c,
                nimbus::bench::AsyncBench {
                    function: name,
                    count,
                    concurrency,
                },
            )
            .await?,
        ),
        Cmd::Bench(BenchCmd::Floor { load }) => {
            let (url, server) = nimbus::bench::floor_server().await?;
            let report = nimbus::bench::load(load.options(url, None)?).await?;
            server.abort();
            print(&report);
        }
        Cmd::Bench(BenchCmd::Wasm { module, iterations }) => {
            let report =
                tokio::task::spawn_blocking(move || nimbus::bench::wasm(&module, iterations))
                    .await??;
            print(&report);
        }
        Cmd::Bench(BenchCmd::CodeFetch {
            size_kb,
            iterations,
            s3_endpoint,
            bucket,
            access_key,
            secret_key,
        }) => {
            let objects = s3_endpoint.map(|endpoint| nimbus_core::config::ObjectsConfig {
                kind: nimbus_core::config::ObjectsKind::S3,
                dir: None,
                bucket,
                endpoint: Some(endpoint),
                s3_region: "us-east-1".into(),
                access_key,
                secret_key,
                path_style: true,
            });
            let report = nimbus::bench::code_fetch(nimbus::bench::CodeFetchBench {
                size: size_kb * 1024,
                iterations,
                objects,
            })
            .await?;
            print(&report);
        }
        Cmd::Replay { .. } => unreachable!("handled by run"),
        Cmd::Up { .. } | Cmd::Serve { .. } => unreachable!("handled by run"),
    }
    Ok(())
}
