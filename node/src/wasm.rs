//! The `wasm` runtime: WASI command modules run inside the node process by wasmtime.
//!
//! The handler names a `.wasm` file in the package: a WASI preview 1 command module.
//! It reads the event JSON on stdin and writes the result to stdout; stderr goes to
//! the function's logs. Every call gets a fresh instance (no state survives a call),
//! made from an [`InstancePre`] that is compiled once per code digest, kept on disk
//! (`{work_dir}/wasm/*.cwasm`) and in memory. Linear memories come from wasmtime's
//! pooling allocator (copy-on-write images, slots reused), so a call costs an
//! instantiation of a few microseconds, not a process.
//!
//! A call runs on the caller's task, not on a thread of its own: wasm code runs on a
//! fiber (wasmtime's async mode) and WASI's host calls are async, so a warm call of a
//! fast module costs no thread hop. At every engine-wide epoch tick ([`TICK`]) a
//! running module yields to the runtime, so a slow one shares its worker instead of
//! holding it. Only loading a module that is not in memory (reading or compiling it)
//! goes to a blocking thread.
//!
//! The package directory is the module's `/var/task` (read-only, preopened at fd 3)
//! only for a module that imports a WASI call that can reach it (`path_*`,
//! `fd_prestat_*`, `fd_readdir`). A warm call of any other module touches no file.
//!
//! Limits: linear memory to the function's `memory_mb` (a `memory.grow` past it traps
//! with `Runtime.OutOfMemory`); the timeout, checked at every tick, which stops a loop
//! that never calls the host.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::{Engine, InstancePre, Linker, Module, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

/// How often the engine's epoch advances: the granularity of timeouts.
const TICK: Duration = Duration::from_millis(5);
/// Most bytes a module may write to stdout (Lambda's 6 MB synchronous response).
const MAX_RESULT: usize = 6 * 1024 * 1024;
/// Most bytes of stderr kept per call for the logs.
const MAX_STDERR: usize = 256 * 1024;
/// Where the package is visible inside the module.
pub const TASK_ROOT: &str = "/var/task";

/// What a call's store holds.
struct State {
    wasi: WasiP1Ctx,
    limits: Limits,
}

/// Caps linear memory at the function's `memory_mb`, and remembers whether a module
/// hit it.
struct Limits {
    memory: usize,
    hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            // A trap, not -1: the function ends with a clear error instead of
            // limping on with a failed allocation.
            wasmtime::bail!("the module asked for {desired} bytes of memory");
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The engine shared by every node agent of this process: one pool of instance slots,
/// one epoch ticker.
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let engine = match Engine::new(&code_service::wasm::config(true)) {
            Ok(e) => e,
            Err(e) => {
                // Some hosts refuse the pool's address-space reservation: instances
                // are then allocated on demand, slower but correct.
                tracing::warn!(error = %e, "wasm pooling allocator unavailable; allocating on demand");
                Engine::new(&code_service::wasm::config(false)).expect("a default wasmtime engine")
            }
        };
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(e) = weak.upgrade() {
                    e.increment_epoch();
                    drop(e);
                    std::thread::sleep(TICK);
                }
            })
            .expect("spawning the epoch thread");
        engine
    })
}

/// Modules loaded into memory, by `from`: `disk` (compiled at deploy by the code
/// service, or earlier on this node) or `compiled` (compiled here, at a call).
static LOADS: std::sync::LazyLock<nimbus_core::metrics::Counters> = std::sync::LazyLock::new(
    || {
        nimbus_core::metrics::counters(
            "wasm_module_loads",
            "wasm modules loaded into memory, by whether they came compiled (disk) or were compiled on the node (compiled)",
        )
    },
);

/// A loaded module, ready to instantiate.
struct Loaded {
    pre: InstancePre<State>,
    /// It imports a WASI call that reaches files ([`reaches_files`]): each of its
    /// calls gets the package directory, opened for that call. Other modules get no
    /// directory at all (which would cost an open, a stat and a close per call).
    files: bool,
}

/// Whether a module can reach the package directory: it imports a call that takes
/// a path (`path_*`), finds the preopened directories (`fd_prestat_*`) or lists one
/// (`fd_readdir`). Without those, a directory at fd 3 is of no use to it.
fn reaches_files(module: &Module) -> bool {
    module.imports().any(|i| {
        i.module() == "wasi_snapshot_preview1"
            && (i.name().starts_with("path_")
                || i.name().starts_with("fd_prestat_")
                || i.name() == "fd_readdir")
    })
}

/// A module in memory that reaches no file: its call needs nothing more (no
/// package directory, nothing from disk).
pub struct Ready(Arc<Loaded>);

/// Where a call's module comes from.
pub enum Source<'a> {
    /// In memory, from [`WasmRuntime::ready`].
    Ready(Ready),
    /// The unpacked package: the module is loaded from memory, its precompiled file
    /// or the package, and the package is the module's `/var/task`.
    Package(&'a Path),
}

/// Modules of one node agent.
pub struct WasmRuntime {
    /// Precompiled modules on disk.
    dir: PathBuf,
    /// Linker with WASI preview 1.
    linker: Linker<State>,
    /// Loaded modules, by code digest and module path.
    loaded: moka::sync::Cache<String, Arc<Loaded>>,
}

/// How a call ended.
pub enum WasmOutcome {
    /// It exited 0 (or returned from `_start`): stdout is the result.
    Ok(Bytes),
    /// It trapped, exited non-zero or ran out of memory: an error document.
    Error(Bytes),
    /// It ran past its timeout.
    Timeout,
    /// Every instance slot of the node is taken.
    Capacity,
}

/// One call's result, with its stderr lines and how its module was found.
pub struct WasmCall {
    /// How it ended.
    pub outcome: WasmOutcome,
    /// What it wrote to stderr.
    pub stderr: Bytes,
    /// The module was loaded (from disk, or compiled) for this call.
    pub cold: bool,
    /// Loading the module (if cold) and instantiating it, in µs.
    pub init_us: u64,
}

/// What a call needs beyond the module.
pub struct WasmCallSpec<'a> {
    /// The module, or the package to find it in.
    pub source: Source<'a>,
    /// The package digest.
    pub code_sha256: &'a str,
    /// The module's path in the package.
    pub handler: &'a str,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Memory limit, MB.
    pub memory_mb: u32,
    /// Timeout, ms.
    pub timeout_ms: u32,
    /// The event (stdin).
    pub event: Bytes,
}

fn error_doc(kind: &str, message: &str) -> Bytes {
    Bytes::from(serde_json::json!({"errorType": kind, "errorMessage": message}).to_string())
}

impl WasmRuntime {
    /// Modules precompiled under `dir`.
    pub fn new(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut linker = Linker::new(engine());
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut State| &mut s.wasi)
            .map_err(|e| anyhow::anyhow!("adding WASI to the linker: {e}"))?;
        Ok(WasmRuntime {
            dir,
            linker,
            loaded: moka::sync::Cache::new(1024),
        })
    }

    fn key(code_sha256: &str, handler: &str) -> String {
        format!("{code_sha256}/{handler}")
    }

    /// The module, if it is in memory and reaches no file.
    pub fn ready(&self, code_sha256: &str, handler: &str) -> Option<Ready> {
        self.loaded
            .get(&Self::key(code_sha256, handler))
            .filter(|m| !m.files)
            .map(Ready)
    }

    /// Whether the module is loaded in memory.
    pub fn is_loaded(&self, code_sha256: &str, handler: &str) -> bool {
        self.loaded.contains_key(&Self::key(code_sha256, handler))
    }

    /// Where the module's compiled form is kept on this node.
    pub fn artifact_path(&self, code_sha256: &str, handler: &str) -> PathBuf {
        self.dir.join(format!(
            "{code_sha256}-{}.cwasm",
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(handler.as_bytes()))[..16]
        ))
    }

    /// Brings the module's compiled form (made by the code service at deploy) to
    /// this node, unless it is loaded or already here. Without it (a package stored
    /// before, another engine's tag, object storage failing) the module is compiled
    /// here at its first call, as before.
    pub async fn fetch_compiled(
        &self,
        cache: &crate::code_cache::CodeCache,
        code_sha256: &str,
        handler: &str,
    ) {
        if self.is_loaded(code_sha256, handler) {
            return;
        }
        let dest = self.artifact_path(code_sha256, handler);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return;
        }
        let key = code_service::wasm::artifact_key(Self::engine_tag(), code_sha256, handler);
        if let Err(e) = cache.fetch_object(&key, &dest).await {
            tracing::debug!(key, error = %format!("{e:#}"), "no compiled module; compiling on this node");
        }
    }

    /// What this node's engine loads: the tag of the code service's artifacts.
    pub fn engine_tag() -> &'static str {
        static TAG: OnceLock<String> = OnceLock::new();
        TAG.get_or_init(|| code_service::wasm::engine_tag(engine()))
    }

    /// Forgets the loaded modules (they stay precompiled on disk).
    pub fn unload_all(&self) {
        self.loaded.invalidate_all();
    }

    /// The module, loaded: from memory, else from its precompiled file, else compiled
    /// (and the compiled form saved). Blocking: compiling takes milliseconds to
    /// seconds. Returns it and whether it had to be loaded.
    fn load(
        &self,
        code_dir: &Path,
        code_sha256: &str,
        handler: &str,
    ) -> anyhow::Result<(Arc<Loaded>, bool)> {
        let key = Self::key(code_sha256, handler);
        if let Some(m) = self.loaded.get(&key) {
            return Ok((m, false));
        }
        let engine = engine();
        let artifact = self.artifact_path(code_sha256, handler);
        let module = match load_precompiled(engine, &artifact) {
            Some(m) => {
                LOADS.get_or_create(&vec![("from", "disk".into())]).inc();
                m
            }
            None => {
                LOADS
                    .get_or_create(&vec![("from", "compiled".into())])
                    .inc();
                let path = code_dir.join(handler);
                let bytes = std::fs::read(&path).map_err(|e| {
                    anyhow::anyhow!("the module '{handler}' cannot be read from the package: {e}")
                })?;
                let module = Module::new(engine, &bytes)
                    .map_err(|e| anyhow::anyhow!("'{handler}' is not a valid module: {e}"))?;
                if let Err(e) = save_precompiled(&module, &artifact) {
                    tracing::warn!(error = %e, "could not save a precompiled module");
                }
                module
            }
        };
        code_service::wasm::check(engine, &module, handler).map_err(|e| anyhow::anyhow!(e))?;
        let pre = self.linker.instantiate_pre(&module).map_err(|e| {
            anyhow::anyhow!(
                "'{handler}' cannot be linked (a WASI preview 1 command module is expected): {e}"
            )
        })?;
        let loaded = Arc::new(Loaded {
            pre,
            files: reaches_files(&module),
        });
        self.loaded.insert(key, loaded.clone());
        Ok((loaded, true))
    }

    /// Loads the module ahead of its calls (pre-warming). Blocking.
    pub fn preload(&self, code_dir: &Path, code_sha256: &str, handler: &str) -> anyhow::Result<()> {
        self.load(code_dir, code_sha256, handler).map(|_| ())
    }

    /// The module, loaded: at once from memory, else on a blocking thread (reading a
    /// precompiled file, or compiling).
    async fn load_async(
        self: &Arc<Self>,
        code_dir: &Path,
        code_sha256: &str,
        handler: &str,
    ) -> anyhow::Result<(Arc<Loaded>, bool)> {
        if let Some(m) = self.loaded.get(&Self::key(code_sha256, handler)) {
            return Ok((m, false));
        }
        let me = self.clone();
        let (dir, sha, handler) = (
            code_dir.to_path_buf(),
            code_sha256.to_string(),
            handler.to_string(),
        );
        tokio::task::spawn_blocking(move || me.load(&dir, &sha, &handler))
            .await
            .map_err(|e| anyhow::anyhow!("loading the module: {e}"))?
    }

    /// Runs one call on a fresh instance, on the caller's task (see the module's
    /// documentation). Dropping the future stops the call.
    pub async fn call(self: &Arc<Self>, spec: WasmCallSpec<'_>) -> WasmCall {
        let t = Instant::now();
        let stderr = MemoryOutputPipe::new(MAX_STDERR);
        let failed = |outcome, cold| WasmCall {
            outcome,
            stderr: Bytes::new(),
            cold,
            init_us: t.elapsed().as_micros() as u64,
        };
        let (module, cold, package) = match spec.source {
            Source::Ready(Ready(m)) => (m, false, None),
            Source::Package(dir) => {
                match self.load_async(dir, spec.code_sha256, spec.handler).await {
                    Ok((m, cold)) => (m, cold, Some(dir)),
                    Err(e) => {
                        return failed(
                            WasmOutcome::Error(error_doc(
                                "Runtime.InvalidModule",
                                &format!("{e:#}"),
                            )),
                            true,
                        );
                    }
                }
            }
        };
        let stdout = MemoryOutputPipe::new(MAX_RESULT);
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdin(MemoryInputPipe::new(spec.event))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .arg(spec.handler)
            .envs(&spec.env);
        if module.files
            && let Some(dir) = package
            && let Err(e) = wasi.preopened_dir(dir, TASK_ROOT, FsPerms::ReadOnly)
        {
            return failed(
                WasmOutcome::Error(error_doc(
                    "Runtime.InitError",
                    &format!("opening the package directory: {e}"),
                )),
                cold,
            );
        }
        let mut store = Store::new(
            engine(),
            State {
                wasi: wasi.build_p1(),
                limits: Limits {
                    memory: (spec.memory_mb as usize) << 20,
                    hit: false,
                },
            },
        );
        store.limiter(|s| &mut s.limits);
        // At every tick: past the timeout, a trap; before, a yield to the runtime.
        let deadline = Instant::now() + Duration::from_millis(spec.timeout_ms as u64);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                // tokio's yield: the task runs again only after the runtime has
                // polled its timers and sockets (a plain wake-up would run it again
                // at once, and they would wait for dozens of ticks).
                UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now()))
            })
        });
        let instance = match module.pre.instantiate_async(&mut store).await {
            Ok(i) => i,
            Err(e) => {
                let outcome = if e
                    .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some()
                {
                    WasmOutcome::Capacity
                } else if store.data().limits.hit {
                    WasmOutcome::Error(error_doc(
                        "Runtime.OutOfMemory",
                        &format!(
                            "the module needs more memory than the function's {} MB",
                            spec.memory_mb
                        ),
                    ))
                } else {
                    WasmOutcome::Error(error_doc("Runtime.InitError", &format!("{e:#}")))
                };
                return failed(outcome, cold);
            }
        };
        let init_us = t.elapsed().as_micros() as u64;
        let run = match instance.get_typed_func::<(), ()>(&mut store, "_start") {
            Ok(start) => start.call_async(&mut store, ()).await,
            Err(e) => Err(e),
        };
        let outcome = match run {
            Ok(()) => WasmOutcome::Ok(stdout.contents()),
            Err(e) => {
                if let Some(exit) = e.downcast_ref::<I32Exit>() {
                    if exit.0 == 0 {
                        WasmOutcome::Ok(stdout.contents())
                    } else {
                        WasmOutcome::Error(error_doc(
                            "Runtime.ExitError",
                            &format!("the module exited with status {}", exit.0),
                        ))
                    }
                } else if store.data().limits.hit {
                    WasmOutcome::Error(error_doc(
                        "Runtime.OutOfMemory",
                        &format!(
                            "the module asked for more memory than the function's {} MB",
                            spec.memory_mb
                        ),
                    ))
                } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    WasmOutcome::Timeout
                } else {
                    let message = match e.downcast_ref::<Trap>() {
                        Some(trap) => format!("wasm trap: {trap}"),
                        None => format!("{e:#}"),
                    };
                    WasmOutcome::Error(error_doc("Runtime.Trap", &message))
                }
            }
        };
        drop(store);
        WasmCall {
            outcome,
            stderr: stderr.contents(),
            cold,
            init_us,
        }
    }
}

/// A module compiled earlier by this engine's configuration, if its file is there and
/// fits.
#[allow(unsafe_code)]
fn load_precompiled(engine: &Engine, path: &Path) -> Option<Module> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: wasmtime runs precompiled code as is, so it must come from
    // `Module::serialize`, unmodified. This file does: it is written, by rename of
    // a complete file, into the node's own work directory (which sandboxed
    // functions cannot write) either by `save_precompiled` or from the code
    // service's artifact in object storage (`wasm/{tag}/…`, a prefix only the code
    // service writes: tenants' objects live under `buckets/`). wasmtime itself
    // refuses a file from another version or configuration (we then compile again).
    match unsafe { Module::deserialize_file(engine, path) } {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "stale precompiled module; compiling again");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Saves a compiled module for the next load, atomically.
fn save_precompiled(module: &Module, path: &Path) -> anyhow::Result<()> {
    let bytes = module
        .serialize()
        .map_err(|e| anyhow::anyhow!("serialising: {e}"))?;
    let tmp = path.with_extension(format!("tmp.{}", nimbus_core::new_id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies stdin to stdout, and says hello on stderr.
    const ECHO: &str = include_str!("../tests/data/echo.wat");

    /// Writes how many calls this instance has served: always 1 if none is reused.
    const COUNTER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (func (export "_start")
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store8 (i32.const 100) (i32.add (i32.const 48) (global.get $calls)))
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

    fn setup(modules: &[(&str, &str)]) -> (tempfile::TempDir, Arc<WasmRuntime>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("code")).unwrap();
        for (name, text) in modules {
            let bin = wat::parse_str(text).unwrap();
            std::fs::write(dir.path().join("code").join(name), bin).unwrap();
        }
        let rt = Arc::new(WasmRuntime::new(dir.path().join("wasm")).unwrap());
        (dir, rt)
    }

    async fn call(
        rt: &Arc<WasmRuntime>,
        dir: &Path,
        handler: &str,
        event: &str,
        timeout_ms: u32,
    ) -> WasmCall {
        rt.call(WasmCallSpec {
            source: Source::Package(&dir.join("code")),
            code_sha256: "0".repeat(64).as_str(),
            handler,
            env: vec![("GREETING".into(), "hi".into())],
            memory_mb: 128,
            timeout_ms,
            event: Bytes::from(event.to_string()),
        })
        .await
    }

    fn error_type(c: &WasmCall) -> String {
        match &c.outcome {
            WasmOutcome::Error(b) => {
                serde_json::from_slice::<serde_json::Value>(b).unwrap()["errorType"]
                    .as_str()
                    .unwrap()
                    .to_string()
            }
            _ => panic!("not an error"),
        }
    }

    #[tokio::test]
    async fn echo_is_loaded_once_and_precompiled_on_disk() {
        let (dir, rt) = setup(&[("echo.wasm", ECHO)]);
        let c = call(&rt, dir.path(), "echo.wasm", r#"{"n":1}"#, 1000).await;
        assert!(matches!(&c.outcome, WasmOutcome::Ok(b) if b == r#"{"n":1}"#));
        assert_eq!(c.stderr, "hello from wasm\n");
        assert!(c.cold);
        let c = call(&rt, dir.path(), "echo.wasm", r#"{"n":2}"#, 1000).await;
        assert!(matches!(&c.outcome, WasmOutcome::Ok(b) if b == r#"{"n":2}"#));
        assert!(!c.cold);
        // A big event goes through whole.
        let big = format!("\"{}\"", "x".repeat(50_000));
        let c = call(&rt, dir.path(), "echo.wasm", &big, 1000).await;
        assert!(matches!(&c.outcome, WasmOutcome::Ok(b) if b == big.as_str()));
        // Forgotten from memory, it comes back from its precompiled file.
        let saved: Vec<_> = std::fs::read_dir(dir.path().join("wasm"))
            .unwrap()
            .collect();
        assert_eq!(saved.len(), 1);
        rt.unload_all();
        std::fs::remove_file(dir.path().join("code/echo.wasm")).unwrap();
        let c = call(&rt, dir.path(), "echo.wasm", "{}", 1000).await;
        assert!(c.cold);
        assert!(matches!(&c.outcome, WasmOutcome::Ok(b) if b == "{}"));
    }

    /// Writes "dir" if a directory is preopened at fd 3, else "none".
    const FILES: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 200) "dirnone")
  (func (export "_start")
    (if (i32.eqz (call $prestat (i32.const 3) (i32.const 64)))
      (then (i32.store (i32.const 0) (i32.const 200)) (i32.store (i32.const 4) (i32.const 3)))
      (else (i32.store (i32.const 0) (i32.const 203)) (i32.store (i32.const 4) (i32.const 4))))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"#;

    #[tokio::test]
    async fn only_a_module_that_reaches_files_gets_the_package() {
        let (dir, rt) = setup(&[("count.wasm", COUNTER), ("files.wasm", FILES)]);
        let sha = "0".repeat(64);
        let c = call(&rt, dir.path(), "files.wasm", "{}", 1000).await;
        assert!(matches!(&c.outcome, WasmOutcome::Ok(b) if b == "dir"));
        assert!(rt.ready(&sha, "files.wasm").is_none());
        call(&rt, dir.path(), "count.wasm", "{}", 1000).await;
        // COUNTER imports fd_write only: once loaded, its calls need no package.
        std::fs::remove_dir_all(dir.path().join("code")).unwrap();
        let spec = |source, handler| WasmCallSpec {
            source,
            code_sha256: &sha,
            handler,
            env: vec![],
            memory_mb: 128,
            timeout_ms: 1000,
            event: Bytes::from_static(b"{}"),
        };
        let ready = rt
            .ready(&sha, "count.wasm")
            .expect("in memory, reaching no file");
        let c = rt.call(spec(Source::Ready(ready), "count.wasm")).await;
        assert!(matches!(&c.outcome, WasmOutcome::Ok(b) if b == "1"));
        assert!(!c.cold);
        // The other still needs its package, which is gone.
        let gone = dir.path().join("code");
        let c = rt.call(spec(Source::Package(&gone), "files.wasm")).await;
        assert_eq!(error_type(&c), "Runtime.InitError");
    }

    #[tokio::test]
    async fn every_call_gets_a_fresh_instance() {
        let (dir, rt) = setup(&[("count.wasm", COUNTER)]);
        for _ in 0..3 {
            let c = call(&rt, dir.path(), "count.wasm", "{}", 1000).await;
            assert!(matches!(&c.outcome, WasmOutcome::Ok(b) if b == "1"));
        }
    }

    /// A module that never calls the host yields at every tick: on a single thread,
    /// timers fire and another call runs meanwhile. A call whose future is dropped
    /// stops, and its instance slot comes back.
    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_module_shares_its_thread_and_stops_when_dropped() {
        let (dir, rt) = setup(&[
            ("echo.wasm", ECHO),
            (
                "loop.wasm",
                r#"(module (func (export "_start") (loop $l (br $l))))"#,
            ),
        ]);
        call(&rt, dir.path(), "echo.wasm", "{}", 1000).await;
        call(&rt, dir.path(), "loop.wasm", "{}", 10).await;
        let t = Instant::now();
        let slow = tokio::spawn({
            let (rt, dir) = (rt.clone(), dir.path().to_path_buf());
            async move { call(&rt, &dir, "loop.wasm", "{}", 2000).await }
        });
        // While the loop runs on the one thread.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let quick = call(&rt, dir.path(), "echo.wasm", r#"{"n":1}"#, 1000).await;
        let quick_at = t.elapsed();
        assert!(matches!(&quick.outcome, WasmOutcome::Ok(b) if b == r#"{"n":1}"#));
        // Its timer fired and it ran between the loop's ticks (a plain wake-up of
        // the loop would hold timers back for about 60 ticks, 300 ms).
        assert!(quick_at < Duration::from_millis(250), "{quick_at:?}");
        let slow = slow.await.expect("the loop's task");
        assert!(matches!(slow.outcome, WasmOutcome::Timeout));
        // Stopped by dropping it, far before its timeout, many times over: the slots
        // (POOL_SLOTS of them) come back each time.
        for _ in 0..(code_service::wasm::POOL_SLOTS + 10) {
            let dropped = tokio::time::timeout(
                Duration::from_millis(1),
                call(&rt, dir.path(), "loop.wasm", "{}", 60_000),
            )
            .await;
            assert!(dropped.is_err());
        }
        let c = call(&rt, dir.path(), "echo.wasm", "{}", 1000).await;
        assert!(matches!(&c.outcome, WasmOutcome::Ok(b) if b == "{}"));
    }

    #[tokio::test]
    async fn traps_exits_loops_and_memory_are_errors() {
        let (dir, rt) = setup(&[
            (
                "trap.wasm",
                r#"(module (func (export "_start") unreachable))"#,
            ),
            (
                "exit.wasm",
                r#"(module
                  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                  (memory (export "memory") 1)
                  (func (export "_start") (call $exit (i32.const 3))))"#,
            ),
            (
                "loop.wasm",
                r#"(module (func (export "_start") (loop $l (br $l))))"#,
            ),
            (
                "grow.wasm",
                r#"(module (memory (export "memory") 1)
                  (func (export "_start") (drop (memory.grow (i32.const 4000)))))"#,
            ),
            (
                "huge.wasm",
                r#"(module (memory (export "memory") 4000) (func (export "_start")))"#,
            ),
            ("lib.wasm", r#"(module (func (export "handler")))"#),
            ("bad.wasm", "(module)"),
        ]);
        let c = call(&rt, dir.path(), "trap.wasm", "{}", 1000).await;
        assert_eq!(error_type(&c), "Runtime.Trap");
        let c = call(&rt, dir.path(), "exit.wasm", "{}", 1000).await;
        assert_eq!(error_type(&c), "Runtime.ExitError");
        let t = Instant::now();
        let c = call(&rt, dir.path(), "loop.wasm", "{}", 200).await;
        assert!(matches!(c.outcome, WasmOutcome::Timeout));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let c = call(&rt, dir.path(), "grow.wasm", "{}", 1000).await;
        assert_eq!(error_type(&c), "Runtime.OutOfMemory");
        let c = call(&rt, dir.path(), "huge.wasm", "{}", 1000).await;
        assert_eq!(error_type(&c), "Runtime.OutOfMemory");
        let c = call(&rt, dir.path(), "lib.wasm", "{}", 1000).await;
        assert_eq!(error_type(&c), "Runtime.InvalidModule");
        let c = call(&rt, dir.path(), "missing.wasm", "{}", 1000).await;
        assert_eq!(error_type(&c), "Runtime.InvalidModule");
        // Not a module at all.
        std::fs::write(dir.path().join("code/junk.wasm"), b"not wasm").unwrap();
        let c = call(&rt, dir.path(), "junk.wasm", "{}", 1000).await;
        assert_eq!(error_type(&c), "Runtime.InvalidModule");
        // The runtime still serves.
        let c = call(&rt, dir.path(), "bad.wasm", "{}", 1000).await;
        assert_eq!(error_type(&c), "Runtime.InvalidModule");
        let c = call(&rt, dir.path(), "trap.wasm", "{}", 1000).await;
        assert_eq!(error_type(&c), "Runtime.Trap");
    }
}
