//! The client commands: `nimbus function …`, `alias`, `trigger`, `invocation`, `task`,
//! `key`, `tenant`, `bench`, each a call (or a few) to the public API.

use nimbus::cli::{self, Client, Deploy};
use nimbus::output::{Format, format, print, print_data, show};
use reqwest::Method;
use serde_json::{Value, json};

use crate::args::{
    AliasCmd, BenchCmd, Cmd, FlowCmd, FnCmd, InvocationCmd, KeyCmd, RegionCmd, TaskCmd, TenantCmd,
    TriggerCmd,
};

/// The columns of `fn list`.
const FUNCTION_COLUMNS: &[&str] = &[
    "name",
    "state",
    "runtime",
    "memory_mb",
    "online",
    "latest_version",
    "updated_at",
];

/// Runs a client command; `usage_output` is `-o` when it asked for csv.
pub(crate) async fn client_command(
    c: &Client,
    cmd: Cmd,
    usage_output: Option<String>,
) -> anyhow::Result<()> {
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
                regions,
            } => {
                let d = Deploy {
                    dir,
                    name,
                    runtime,
                    handler,
                    memory_mb: memory,
                    timeout_ms: timeout,
                    env,
                    no_wait,
                    from_region: None,
                };
                if regions.is_empty() {
                    print(&cli::deploy(c, d).await?);
                } else {
                    let (report, failed) = cli::deploy_regions(c, d, &regions).await?;
                    print(&report);
                    anyhow::ensure!(failed == 0, "the deploy failed in {failed} region(s)");
                }
            }
            FnCmd::List => show(
                &c.call(Method::GET, "/v1/functions", None).await?.1,
                FUNCTION_COLUMNS,
            ),
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
                watch,
            } => {
                let event: Value = serde_json::from_str(&data)
                    .map_err(|e| anyhow::anyhow!("--data is not JSON: {e}"))?;
                let q = qualifier
                    .map(|q| format!("?qualifier={q}"))
                    .unwrap_or_default();
                let kind = if queued { "async" } else { "sync" };
                let (v, failed) = c
                    .invoke(&format!("/v1/functions/{name}/invoke{q}"), event, kind)
                    .await?;
                if watch {
                    let id = v["invocation_id"].as_str().unwrap_or_default();
                    let end = crate::tools::watch(c, id).await?;
                    print_data(&end);
                    anyhow::ensure!(
                        end["state"] == "Succeeded",
                        "the invocation ended {}",
                        end["state"].as_str().unwrap_or("?")
                    );
                    return Ok(());
                }
                print_data(&v);
                if let Some(kind) = failed {
                    return Err(nimbus::cli::FunctionFailed { kind }.into());
                }
            }
            FnCmd::Metrics {
                name,
                since,
                from,
                to,
                period,
            } => {
                nimbus::usage_cli::metrics(
                    c,
                    nimbus::usage_cli::MetricsArgs {
                        name,
                        since,
                        from,
                        to,
                        period,
                    },
                    format(),
                )
                .await?
            }
            FnCmd::Logs {
                name,
                limit,
                follow,
                request_id,
            } => {
                let mut path = format!("/v1/functions/{name}/logs?limit={limit}");
                if let Some(r) = &request_id {
                    path.push_str(&format!("&request_id={r}"));
                }
                let show = |l: &Value| {
                    println!(
                        "{} {} [{}] {}",
                        l["timestamp"].as_str().unwrap_or(""),
                        l["request_id"].as_str().unwrap_or(""),
                        l["stream"].as_str().unwrap_or(""),
                        l["message"].as_str().unwrap_or("")
                    );
                };
                if follow {
                    c.follow(&format!("{path}&follow=true"), show).await?;
                } else {
                    let (_, v) = c.call(Method::GET, &path, None).await?;
                    v["lines"].as_array().into_iter().flatten().for_each(show);
                }
            }
            FnCmd::Versions { name } => show(
                &c.call(Method::GET, &format!("/v1/functions/{name}/versions"), None)
                    .await?
                    .1,
                &[
                    "version",
                    "runtime",
                    "handler",
                    "memory_mb",
                    "code_sha256",
                    "created_at",
                    "description",
                ],
            ),
            FnCmd::Init { name, runtime, dir } => crate::tools::init(&name, &runtime, dir)?,
            FnCmd::Online { name } => {
                c.call(
                    Method::POST,
                    &format!("/v1/functions/{name}/online"),
                    Some(json!({})),
                )
                .await?;
                print(&json!({"function": name, "online": true}));
            }
            FnCmd::Offline { name } => {
                c.call(
                    Method::POST,
                    &format!("/v1/functions/{name}/offline"),
                    Some(json!({})),
                )
                .await?;
                print(&json!({"function": name, "online": false}));
            }
            cmd @ (FnCmd::Config { .. } | FnCmd::Async { .. }) => {
                crate::tools::configure(c, cmd).await?
            }
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
            AliasCmd::List { function } => show(
                &c.call(
                    Method::GET,
                    &format!("/v1/functions/{function}/aliases"),
                    None,
                )
                .await?
                .1,
                &[
                    "name",
                    "version",
                    "additional_version_weights",
                    "updated_at",
                ],
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
            InvocationCmd::List(h) => print(
                &c.call(Method::GET, &format!("/v1/invocations{}", h.query()), None)
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
        Cmd::Task(TaskCmd::Get { id, wait }) => print(
            &c.call(Method::GET, &format!("/v1/tasks/{id}?wait={wait}"), None)
                .await?
                .1,
        ),
        Cmd::Task(TaskCmd::List(h)) => print(
            &c.call(Method::GET, &format!("/v1/tasks{}", h.query()), None)
                .await?
                .1,
        ),
        Cmd::Key(k) => match k {
            KeyCmd::Create { role, name, tenant } => {
                let mut body = json!({"role": role, "name": name});
                if let Some(t) = tenant {
                    body["tenant"] = json!(t);
                }
                let made = c.call(Method::POST, "/v1/api-keys", Some(body)).await?.1;
                print(&made);
                aws_profile(&made, &name, &c.url);
            }
            KeyCmd::List => print(&c.call(Method::GET, "/v1/api-keys", None).await?.1),
            KeyCmd::Revoke { id } => {
                c.call(Method::DELETE, &format!("/v1/api-keys/{id}"), None)
                    .await?;
                print(&json!({"revoked": id}));
            }
        },
        Cmd::Tenant(t) => match t {
            TenantCmd::Create { name } => {
                let made = c
                    .call(Method::POST, "/v1/tenants", Some(json!({"name": name})))
                    .await?
                    .1;
                print(&made);
                aws_profile(&made, &name, &c.url);
            }
            TenantCmd::List => print(&c.call(Method::GET, "/v1/tenants", None).await?.1),
            TenantCmd::Delete { name } => {
                c.call(Method::DELETE, &format!("/v1/tenants/{name}"), None)
                    .await?;
                print(&json!({"deleted": name}));
            }
            TenantCmd::Limits { name, set } => crate::tools::limits(c, &name, &set).await?,
        },
        Cmd::Apply {
            file,
            dry_run,
            prune,
        } => {
            let f = nimbus::output::asked().unwrap_or(Format::Table);
            crate::tools::apply(c, &file, dry_run, prune, f).await?
        }
        Cmd::Export { dir } => {
            let f = nimbus::output::asked().unwrap_or(Format::Yaml);
            crate::tools::export(c, dir.as_deref(), f).await?
        }
        Cmd::Login { key } => crate::tools::login(c, key).await?,
        Cmd::Bucket(b) => crate::tools::bucket(c, b).await?,
        Cmd::Queue(q) => crate::tools::queue(c, q).await?,
        Cmd::Network(n) => crate::tools::network(c, n).await?,
        Cmd::Flow(f) => flow(c, f).await?,
        Cmd::Usage {
            from,
            to,
            group_by,
            tenant,
        } => {
            nimbus::usage_cli::run(
                c,
                nimbus::usage_cli::UsageArgs {
                    from,
                    to,
                    group_by,
                    tenant,
                    output: usage_output.unwrap_or_else(|| match format() {
                        Format::Json => "json".into(),
                        Format::Yaml => "yaml".into(),
                        Format::Table => "table".into(),
                    }),
                },
            )
            .await?
        }
        Cmd::Region(RegionCmd::List) => print(&c.call(Method::GET, "/v1/regions", None).await?.1),
        Cmd::Bench(BenchCmd::Flow {
            states,
            count,
            concurrency,
        }) => {
            let opts = nimbus::bench_flow::FlowBench {
                states,
                count,
                concurrency: concurrency.max(1),
            };
            print(&nimbus::bench_flow::run(c, opts).await?);
        }
        Cmd::Bench(BenchCmd::Propagation { to, count }) => {
            let report =
                nimbus::propagation::run(c, nimbus::propagation::Propagation { count, to }).await?;
            print(&report);
        }
        Cmd::Bench(BenchCmd::Create {
            count,
            concurrency,
            poll_ms,
            keep,
        }) => {
            let report = nimbus::bench::create(
                c,
                nimbus::bench::CreateBench {
                    count,
                    concurrency,
                    poll: (poll_ms > 0).then(|| std::time::Duration::from_millis(poll_ms)),
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
            lambda,
            functions,
        }) => {
            anyhow::ensure!(
                functions.is_none() || target.is_none(),
                "--functions and --target cannot go together"
            );
            let names: Vec<String> = match functions {
                Some(n) => (0..n).map(|i| format!("{name}-{i}")).collect(),
                None => vec![name],
            };
            // A function that is not there fails now, not after the whole run.
            if target.is_none() && c.token.is_some() {
                for name in &names {
                    c.call(Method::GET, &format!("/v1/functions/{name}"), None)
                        .await?;
                }
            }
            let q = qualifier
                .map(|q| format!("?qualifier={q}"))
                .unwrap_or_default();
            let url = |name: &str| match &target {
                Some(t) => format!("{}{t}", c.url),
                None if lambda => format!("{}/2015-03-31/functions/{name}/invocations", c.url),
                None => format!("{}/v1/functions/{name}/invoke{q}", c.url),
            };
            let url: Vec<String> = names.iter().map(|n| url(n)).collect();
            if lambda {
                let env = |k: &str| {
                    std::env::var(k)
                        .map_err(|_| anyhow::anyhow!("--lambda needs {k} (the key's AWS pair)"))
                };
                let mut opts = load.options(url, None)?;
                opts.sigv4 = Some(nimbus::bench::SigV4 {
                    access_key_id: env("AWS_ACCESS_KEY_ID")?,
                    secret: env("AWS_SECRET_ACCESS_KEY")?,
                    region: std::env::var("AWS_REGION").unwrap_or_else(|_| "local".into()),
                });
                return bench_report(nimbus::bench::load(opts).await?);
            }
            bench_report(nimbus::bench::load(load.options(url, c.token.clone())?).await?)?;
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
            let report = nimbus::bench::load(load.options(vec![url], None)?).await?;
            server.abort();
            print(&report);
        }
        Cmd::Bench(BenchCmd::Wasm { module, iterations }) => {
            let report = nimbus::bench::wasm(&module, iterations).await?;
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
        Cmd::Replay { .. }
        | Cmd::Up { .. }
        | Cmd::Serve { .. }
        | Cmd::Completions { .. }
        | Cmd::Man { .. } => unreachable!("handled by run"),
    }
    Ok(())
}

/// After a key is made: an AWS profile for its access-key pair, on stderr (stdout
/// stays the JSON answer), for boto3, the AWS CLI and the SDKs.
fn aws_profile(made: &serde_json::Value, name: &str, url: &str) {
    let (Some(id), Some(secret)) = (
        made["aws_access_key_id"].as_str(),
        made["aws_secret_access_key"].as_str(),
    ) else {
        return;
    };
    let region = made["aws_region"].as_str().unwrap_or("local");
    eprintln!(
        "\n# The key's AWS pair, for boto3, the AWS CLI and the SDKs (shown once).\n\
         # In ~/.aws/credentials:\n\
         [nimbus-{name}]\n\
         aws_access_key_id = {id}\n\
         aws_secret_access_key = {secret}\n\
         # In ~/.aws/config:\n\
         [profile nimbus-{name}]\n\
         region = {region}\n\
         endpoint_url = {url}\n\
         # Then: aws --profile nimbus-{name} lambda list-functions"
    );
}

/// `nimbus flow …`.
async fn flow(c: &Client, f: FlowCmd) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let read = |path: &std::path::Path| -> anyhow::Result<Value> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
    };
    match f {
        FlowCmd::Create { name, definition } => {
            let body = json!({"name": name, "definition": read(&definition)?});
            print(
                &c.call(Method::POST, "/v1/state-machines", Some(body))
                    .await?
                    .1,
            );
        }
        FlowCmd::Update { name, definition } => {
            let body = json!({"definition": read(&definition)?});
            let path = format!("/v1/state-machines/{name}");
            print(&c.call(Method::PUT, &path, Some(body)).await?.1);
        }
        FlowCmd::List => print(&c.call(Method::GET, "/v1/state-machines", None).await?.1),
        FlowCmd::Start {
            name,
            input,
            execution_name,
            wait,
        } => {
            let input: Value = match input {
                Some(s) => serde_json::from_str(&s).context("--input is not JSON")?,
                None => json!({}),
            };
            let mut body = json!({ "input": input });
            if let Some(n) = execution_name {
                body["name"] = json!(n);
            }
            let path = format!("/v1/state-machines/{name}/executions");
            let (_, started) = c.call(Method::POST, &path, Some(body)).await?;
            let id = started["execution_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !wait {
                print(&started);
                return Ok(());
            }
            let e = follow(c, &id).await?;
            print(&e);
            anyhow::ensure!(
                e["status"] == "SUCCEEDED",
                "the execution ended {}",
                e["status"].as_str().unwrap_or("?")
            );
        }
        FlowCmd::Get { id } => print(
            &c.call(Method::GET, &format!("/v1/executions/{id}"), None)
                .await?
                .1,
        ),
        FlowCmd::History { id } => print(
            &c.call(Method::GET, &format!("/v1/executions/{id}/history"), None)
                .await?
                .1,
        ),
        FlowCmd::Stop { id } => print(
            &c.call(
                Method::POST,
                &format!("/v1/executions/{id}/stop"),
                Some(json!({})),
            )
            .await?
            .1,
        ),
        FlowCmd::Executions { name, status } => {
            let q = status.map(|s| format!("?status={s}")).unwrap_or_default();
            let path = format!("/v1/state-machines/{name}/executions{q}");
            print(&c.call(Method::GET, &path, None).await?.1);
        }
        FlowCmd::Delete { name } => {
            c.call(Method::DELETE, &format!("/v1/state-machines/{name}"), None)
                .await?;
            print(&json!({"deleted": name}));
        }
    }
    Ok(())
}

/// Prints each state of an execution as it passes (on stderr), until it stops;
/// returns the execution.
async fn follow(c: &Client, id: &str) -> anyhow::Result<Value> {
    let mut next = 0i64;
    loop {
        let path = format!("/v1/executions/{id}/history?after={next}");
        let (_, h) = c.call(Method::GET, &path, None).await?;
        for ev in h["events"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            next = ev["id"].as_i64().unwrap_or(next) + 1;
            let state = ev["state"].as_str().unwrap_or("");
            match ev["type"].as_str().unwrap_or("") {
                "StateEntered" => eprintln!("→ {state}"),
                "StateRetry" => eprintln!(
                    "  ↻ {state}: {} (attempt {})",
                    ev["error"].as_str().unwrap_or(""),
                    ev["attempt"]
                ),
                "StateFailed" => eprintln!("  ✗ {state}: {}", ev["error"].as_str().unwrap_or("")),
                _ => {}
            }
        }
        if h["status"] != "RUNNING" {
            return Ok(c
                .call(Method::GET, &format!("/v1/executions/{id}"), None)
                .await?
                .1);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Prints a load report; a run in which no call succeeded is a failure.
fn bench_report(report: Value) -> anyhow::Result<()> {
    print(&report);
    if report["ok"].as_u64() == Some(0) {
        anyhow::bail!(
            "no call succeeded: {} (see `errors` above)",
            report["errors"]
        );
    }
    Ok(())
}
