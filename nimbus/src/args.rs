//! The command line: every subcommand and flag of `nimbus` (clap definitions only).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "nimbus", version, about = "Nimbus serverless platform")]
pub(crate) struct Args {
    /// API base URL (else NIMBUS_URL, else the config file, else http://127.0.0.1:8080).
    #[arg(long, global = true)]
    pub(crate) url: Option<String>,
    /// API key or JWT (else NIMBUS_TOKEN, else the config file).
    #[arg(long, global = true)]
    pub(crate) token: Option<String>,
    /// The region to talk to: its endpoint is looked up in the region catalogue
    /// (`GET /v1/regions`) of the --url endpoint.
    #[arg(long, global = true, env = "NIMBUS_REGION")]
    pub(crate) region: Option<String>,
    /// How to print answers: table, json or yaml (usage also takes csv). Default: a
    /// table on a terminal, JSON when piped.
    #[arg(long, short = 'o', global = true)]
    pub(crate) output: Option<String>,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
    /// State machines (Amazon States Language) and their executions.
    #[command(subcommand)]
    Flow(FlowCmd),
    /// Tenants (admin).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Usage and its estimated cost: by function, day or hour (admins: by tenant,
    /// nearest their monthly cap first). A table with a bar chart of GB-seconds on a
    /// terminal.
    Usage {
        /// First day (YYYY-MM-DD, UTC) or RFC 3339 time; default: this month's start.
        #[arg(long)]
        from: Option<String>,
        /// Last day, included (YYYY-MM-DD), or RFC 3339 time; default: now.
        #[arg(long)]
        to: Option<String>,
        /// function, day, hour (at most 31 days) or tenant (admins).
        #[arg(long)]
        group_by: Option<String>,
        /// Admins: one tenant's usage.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Make a spec file (or a directory of them) true: show the changes (one line
    /// each; -o json|yaml for data), then make them. A second apply changes nothing.
    Apply {
        /// The spec: a .yaml/.yml/.json file, or a directory of them.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Show the changes and stop.
        #[arg(long)]
        dry_run: bool,
        /// Also delete what the spec does not name (functions, state machines, and
        /// the aliases and triggers of the functions it names).
        #[arg(long)]
        prune: bool,
    },
    /// Write the spec of what exists (YAML; -o json for JSON).
    Export {
        /// Write DIR/nimbus.yaml and each function's code into DIR/NAME/, so that
        /// `nimbus apply -f DIR` makes the same again.
        #[arg(long, short = 'd')]
        dir: Option<PathBuf>,
    },
    /// Check an API key against a Nimbus and save both in ~/.config/nimbus/config.toml.
    Login {
        /// The API key (else asked for on the terminal, or read from stdin).
        #[arg(long = "key")]
        key: Option<String>,
    },
    /// Buckets and their objects.
    #[command(subcommand)]
    Bucket(BucketCmd),
    /// Tenant message queues.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// The tenant's network: where its functions may connect.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Shell completions, printed: `nimbus completions bash > /etc/bash_completion.d/nimbus`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// The man pages: nimbus(1) on stdout, or one page per command into --dir.
    Man {
        /// Write nimbus.1, nimbus-fn.1, nimbus-fn-deploy.1, … here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The regions: name, endpoint and zones of each.
    #[command(subcommand)]
    Region(RegionCmd),
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
pub(crate) enum BenchCmd {
    /// A state machine of --states noop Tasks end to end, against the same calls made
    /// by hand; then the engine's transitions per second with Pass states (needs a
    /// developer key).
    Flow {
        /// States in each chain.
        #[arg(long, default_value_t = 10)]
        states: usize,
        /// Task chains timed one after the other (and 4× as many Pass chains, at
        /// most 1,000, for transitions per second).
        #[arg(long, default_value_t = 50)]
        count: usize,
        /// Requests at once starting the Pass chains.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// How long a key made or revoked in this region (--url, an admin --token) takes
    /// to take effect in another (--to): the global directory's propagation.
    Propagation {
        /// The other region's endpoint.
        #[arg(long)]
        to: String,
        /// Keys to make and revoke.
        #[arg(long, default_value_t = 50)]
        count: usize,
    },
    /// Create → Active latency and tasks per second (needs a developer or owner key).
    Create {
        /// Functions to create.
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// Creates in flight at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Poll each create's task every this many ms instead of waiting for its end
        /// in one request (`GET /v1/tasks/{id}?wait=20`, the default, 0). Each poll
        /// is a request the server handles while it works on the tasks.
        #[arg(long, default_value_t = 0)]
        poll_ms: u64,
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
        /// Spread the load over N functions, NAME-0 … NAME-{N-1}, in turn (they must
        /// exist): a node's density, against one function's throughput.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        functions: Option<u32>,
        /// Call through the Lambda-compatible API (Invoke), each request signed with
        /// AWS Signature V4 by AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, scoped to
        /// AWS_REGION (default `local`).
        #[arg(long)]
        lambda: bool,
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
pub(crate) struct LoadArgs {
    /// Open loop: requests per second.
    #[arg(long, conflicts_with = "concurrency")]
    pub(crate) rate: Option<u32>,
    /// Closed loop: callers in parallel (default 1).
    #[arg(long)]
    pub(crate) concurrency: Option<usize>,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// The event file (default: {}).
    #[arg(long)]
    pub(crate) payload: Option<PathBuf>,
    /// Only the JSON report, no progress line.
    #[arg(long)]
    pub(crate) json: bool,
}

impl LoadArgs {
    pub(crate) fn options(
        &self,
        urls: Vec<String>,
        token: Option<String>,
    ) -> anyhow::Result<nimbus::bench::LoadOptions> {
        let payload = match &self.payload {
            Some(p) => {
                std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?
            }
            None => b"{}".to_vec(),
        };
        anyhow::ensure!(self.duration > 0.0, "--duration must be positive");
        anyhow::ensure!(!urls.is_empty(), "nothing to send load to");
        Ok(nimbus::bench::LoadOptions {
            urls,
            token,
            payload,
            load: match (self.rate, self.concurrency) {
                (Some(r), _) => nimbus::bench::Load::Rate(r),
                (None, c) => nimbus::bench::Load::Concurrency(c.unwrap_or(1)),
            },
            duration: std::time::Duration::from_secs_f64(self.duration),
            progress: !self.json,
            sigv4: None,
        })
    }
}

#[derive(Subcommand)]
pub(crate) enum FnCmd {
    /// Zip DIR and create the function, or update it; wait for the task.
    Deploy {
        /// The directory with the function's code (zipped as it is).
        dir: PathBuf,
        /// The function's name; default: the directory's name.
        #[arg(long)]
        name: Option<String>,
        /// python3, nodejs, provided (a `bootstrap` executable) or wasm.
        #[arg(long)]
        runtime: String,
        /// python3/nodejs: FILE.FUNCTION (index.handler); wasm: the module file
        /// (echo.wasm); provided: passed to bootstrap as _HANDLER.
        #[arg(long)]
        handler: String,
        /// Memory in MB, 64–3072 (default 128); CPU share follows it.
        #[arg(long)]
        memory: Option<u32>,
        /// Timeout in milliseconds, 100–900000 (default 3000).
        #[arg(long)]
        timeout: Option<u32>,
        /// K=V, repeatable.
        #[arg(long)]
        env: Vec<String>,
        /// Return after the API accepted the change.
        #[arg(long)]
        no_wait: bool,
        /// Deploy to each of these regions (comma-separated names from the region
        /// catalogue) instead of one; reports each region's result.
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
    },
    /// List functions.
    List,
    /// Show one function.
    Get { name: String },
    /// Delete a function and wait.
    Delete {
        name: String,
        /// Return once the API accepted the deletion.
        #[arg(long)]
        no_wait: bool,
    },
    /// Publish $LATEST as the next version and wait.
    Publish {
        name: String,
        /// The version's description (256 characters at most).
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
        /// With --async: follow the invocation (each state on stderr) and print its
        /// result; exits 1 if it fails.
        #[arg(long, requires = "queued")]
        watch: bool,
    },
    /// Write a new function's files: a handler for RUNTIME and a test event.
    Init {
        /// The function's name (and its directory's, unless --dir).
        name: String,
        /// python3, nodejs or provided.
        #[arg(long)]
        runtime: String,
        /// Where to write (default ./NAME); it must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Take invocations again.
    Online { name: String },
    /// Refuse invocations (409), keeping code and config.
    Offline { name: String },
    /// Change the configuration (only what is given) and wait.
    Config {
        name: String,
        /// Memory in MB, 64–3072.
        #[arg(long)]
        memory: Option<u32>,
        /// Timeout in milliseconds, 100–900000.
        #[arg(long)]
        timeout: Option<u32>,
        /// Replace the environment: K=V, repeatable (--env '' clears it).
        #[arg(long)]
        env: Vec<String>,
        /// Concurrency kept for this function alone (and its cap); `none` removes it.
        #[arg(long)]
        reserved: Option<String>,
        /// Instances kept started.
        #[arg(long)]
        provisioned: Option<u32>,
        /// A description, 256 characters at most.
        #[arg(long)]
        description: Option<String>,
    },
    /// Show or change the asynchronous invocation settings (only what is given).
    Async {
        name: String,
        /// Retries after the first attempt, 0–10.
        #[arg(long)]
        max_retries: Option<u32>,
        /// The wait before retry k is this × 2^(k-1), ms.
        #[arg(long)]
        retry_base_delay_ms: Option<u64>,
        /// Events older than this stop retrying, seconds (1–21600).
        #[arg(long)]
        max_event_age_s: Option<u64>,
        /// A function called with each success (`none` removes it).
        #[arg(long)]
        on_success: Option<String>,
        /// A function called with each final failure (`none` removes it).
        #[arg(long)]
        on_failure: Option<String>,
        /// A URL POSTed each result (`none` removes it).
        #[arg(long)]
        callback_url: Option<String>,
    },
    /// The function's invocations, errors, throttles, cold starts and p50/p99
    /// durations per period (default: the last hour by the minute).
    Metrics {
        name: String,
        /// How far back: 90s, 15m, 6h, 7d (default 1h).
        #[arg(long, conflicts_with = "from")]
        since: Option<String>,
        /// Start, RFC 3339.
        #[arg(long)]
        from: Option<String>,
        /// End, RFC 3339 (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Seconds per row: a multiple of 60 (default: chosen for the range).
        #[arg(long)]
        period: Option<u32>,
    },
    /// Print the function's recent log lines.
    Logs {
        name: String,
        /// How many of the newest lines to show first.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Keep following: print new lines as they arrive (Ctrl-C stops).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the lines of this request id (its START, output, END and REPORT).
        #[arg(long)]
        request_id: Option<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum AliasCmd {
    /// Create or move an alias: `alias set FUNCTION ALIAS --version N [--weight V=W]`.
    Set {
        function: String,
        alias: String,
        /// The version it routes to (most of the traffic with --weight).
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
pub(crate) enum TriggerCmd {
    /// Add a trigger: `--type http --path /hello [--method GET]… [--public]`,
    /// `--type timer --cron "*/5 * * * * *"`, `--type queue --queue orders`, or
    /// `--type storage --bucket uploads [--event put]… [--prefix P] [--suffix S]`.
    Add {
        function: String,
        /// http, timer, queue or storage.
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
pub(crate) enum InvocationCmd {
    /// Show an asynchronous invocation: state, attempts, result, errors.
    Get { id: String },
    /// List asynchronous invocations, newest first.
    List(HistoryArgs),
    /// List a function's dead letters.
    DeadLetters { function: String },
    /// Run a dead letter again.
    Replay { id: String },
}

#[derive(Subcommand)]
pub(crate) enum TaskCmd {
    /// Show a task.
    Get {
        id: String,
        /// Wait up to this many seconds (at most 20) for the task to end first.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// List tasks (every change to a function), newest first.
    List(HistoryArgs),
}

#[derive(Subcommand)]
pub(crate) enum KeyCmd {
    /// Create a key; the key is printed once.
    Create {
        /// invoker, developer or owner; admin, with an admin key.
        #[arg(long)]
        role: String,
        /// A name to tell the key apart.
        #[arg(long)]
        name: String,
        /// The tenant it belongs to (admins only; default: the caller's).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List keys.
    List,
    /// Revoke a key.
    Revoke { id: String },
}

#[derive(Subcommand)]
pub(crate) enum TenantCmd {
    /// Create a tenant; prints its owner key once.
    Create { name: String },
    /// List tenants.
    List,
    /// Delete a tenant and everything it has.
    Delete { name: String },
    /// Show a tenant's limits, or change some: --set max_concurrency=50
    /// --set monthly_requests=none.
    Limits {
        name: String,
        /// KEY=VALUE (a number, or `none` for no cap), repeatable.
        #[arg(long = "set")]
        set: Vec<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum BucketCmd {
    /// Create a bucket (nothing happens if it exists).
    Create { bucket: String },
    /// List buckets.
    List,
    /// Store an object: the bytes of FILE, or of stdin when FILE is `-`.
    Put {
        bucket: String,
        key: String,
        file: PathBuf,
    },
    /// Print an object's bytes (or write them to --to).
    Get {
        bucket: String,
        key: String,
        /// Write here instead of stdout.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Delete an object.
    Delete { bucket: String, key: String },
}

#[derive(Subcommand)]
pub(crate) enum QueueCmd {
    /// Send a message (JSON) to a queue; its queue triggers get it.
    Send {
        queue: String,
        /// The message (JSON); default {}.
        #[arg(long, default_value = "{}")]
        data: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum NetworkCmd {
    /// Show the egress rules and the egress proxy.
    Get,
    /// Replace the egress rules: --egress api.example.com:443 (repeatable); none
    /// given: no egress at all.
    Set {
        /// A CIDR or host name (with an optional :port) functions may reach.
        #[arg(long)]
        egress: Vec<String>,
    },
}

#[derive(Subcommand)]
pub(crate) enum RegionCmd {
    /// List the regions.
    List,
}

#[derive(Subcommand)]
pub(crate) enum FlowCmd {
    /// Create a state machine from an ASL definition file (JSON).
    Create { name: String, definition: PathBuf },
    /// Replace a state machine's definition.
    Update { name: String, definition: PathBuf },
    /// List state machines.
    List,
    /// Start an execution.
    Start {
        name: String,
        /// The input, JSON (default {}).
        #[arg(long)]
        input: Option<String>,
        /// A name for the execution: starting again with it gives the same one.
        #[arg(long)]
        execution_name: Option<String>,
        /// Follow it: each state as it passes, then the result.
        #[arg(long)]
        wait: bool,
    },
    /// Show an execution.
    Get { id: String },
    /// An execution's history.
    History { id: String },
    /// Stop an execution.
    Stop { id: String },
    /// A state machine's executions (optionally of one status).
    Executions {
        name: String,
        /// RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED.
        #[arg(long)]
        status: Option<String>,
    },
    /// Delete a state machine (its running executions are aborted).
    Delete { name: String },
}

/// Filters of `task list` and `invocation list`.
#[derive(clap::Args)]
pub(crate) struct HistoryArgs {
    /// Only this function's.
    #[arg(long)]
    pub(crate) function: Option<String>,
    /// Only those in this state (tasks: Running, Succeeded, Failed; invocations:
    /// Queued, Running, Succeeded, Failed, DeadLettered).
    #[arg(long)]
    pub(crate) state: Option<String>,
    /// At most this many (1–1000).
    #[arg(long, default_value_t = 50)]
    pub(crate) limit: u64,
}

impl HistoryArgs {
    /// The listing's query string.
    pub(crate) fn query(&self) -> String {
        let mut q = format!("?limit={}", self.limit);
        if let Some(f) = &self.function {
            q.push_str(&format!("&function={f}"));
        }
        if let Some(s) = &self.state {
            q.push_str(&format!("&state={s}"));
        }
        q
    }
}
