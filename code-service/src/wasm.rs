//! wasm modules compiled at deploy: the code service validates a `wasm` function's
//! module (a WASI preview 1 command: it compiles, exports `_start`, and links against
//! WASI), compiles it to native code once, and stores the result beside the package,
//! keyed by the package digest, the module's path and the engine's compatibility tag.
//! Nodes load it instead of compiling at the first call.
//!
//! The engine configuration lives here so that what the code service compiles is
//! what the nodes' engine loads: [`config`]. The tag ([`engine_tag`]) digests
//! everything wasmtime checks before it loads compiled code (its version, target,
//! compiler flags, tunables, features), so a node of another version or
//! configuration finds no artifact under its tag and compiles for itself.

use std::hash::Hasher;
use std::sync::OnceLock;

use sha2::Digest as _;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
};

/// Instances (and linear memories) that may run at once in a node process.
pub const POOL_SLOTS: u32 = 512;
/// The largest linear memory (wasm32's whole address space).
pub const MAX_MEMORY: usize = 4 << 30;
/// Memory (and table) bytes a pool slot keeps resident between calls: a call's
/// written pages up to this are reset by copy, the rest returned to the kernel. At
/// most `POOL_SLOTS` × this stays resident (256 MB).
pub const KEEP_RESIDENT: usize = 512 << 10;

/// The engine configuration of every node, with the pooling allocator or without
/// (what a node falls back to where the pool's address space is refused).
pub fn config(pooling: bool) -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true);
    if pooling {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(POOL_SLOTS)
            .total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            .total_component_instances(0)
            .max_memory_size(MAX_MEMORY);
        // A slot's memory stays mapped between calls: the pages a call wrote are
        // copied back from the module's image (found by the kernel's PAGEMAP_SCAN,
        // Linux 6.7 and later), up to KEEP_RESIDENT, rather than unmapped. Without
        // it, every call paid page faults and cross-core TLB shootdowns.
        pool.linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

/// The code service's engine: compiles only (no instances, no pool).
pub fn compiler() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(&config(false)).expect("a wasmtime engine"))
}

/// Feeds `Hash` output into SHA-256, for a tag that is stable across builds.
struct Sha(sha2::Sha256);

impl Hasher for Sha {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

/// What compiled code of `engine` is compatible with: 16 hex digits.
pub fn engine_tag(engine: &Engine) -> String {
    let mut h = Sha(sha2::Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    hex::encode(&h.0.finalize()[..8])
}

/// Where the compiled form of the package's module `handler` is stored.
pub fn artifact_key(tag: &str, code_sha256: &str, handler: &str) -> String {
    format!(
        "wasm/{tag}/{code_sha256}-{}.cwasm",
        &hex::encode(sha2::Sha256::digest(handler.as_bytes()))[..16]
    )
}

/// Checks a module as a node will run it, and compiles it: the compiled bytes and
/// the tag they are for. The error says what is wrong, for the deploy task's reason.
pub fn compile(bytes: &[u8], handler: &str) -> Result<(Vec<u8>, String), String> {
    let engine = compiler();
    let module = Module::new(engine, bytes)
        .map_err(|e| format!("'{handler}' is not a valid module: {e:#}"))?;
    check(engine, &module, handler)?;
    let compiled = module
        .serialize()
        .map_err(|e| format!("compiling '{handler}': {e:#}"))?;
    Ok((compiled, engine_tag(engine)))
}

/// A WASI preview 1 command: `_start`, and nothing to import beyond WASI.
pub fn check(engine: &Engine, module: &Module, handler: &str) -> Result<(), String> {
    if !module.exports().any(|e| e.name() == "_start") {
        return Err(format!(
            "'{handler}' exports no _start function: a WASI command module is expected"
        ));
    }
    let mut linker: Linker<wasmtime_wasi::p1::WasiP1Ctx> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s| s)
        .map_err(|e| format!("adding WASI to the linker: {e}"))?;
    linker.instantiate_pre(module).map(|_| ()).map_err(|e| {
        format!("'{handler}' cannot be linked (a WASI preview 1 command module is expected): {e:#}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool does not change what code is compatible with: one artifact serves
    /// nodes with and without it.
    #[test]
    fn pooling_keeps_the_tag() {
        let pooled = Engine::new(&config(true)).unwrap();
        assert_eq!(engine_tag(&pooled), engine_tag(compiler()));
    }

    #[test]
    fn modules_are_checked_at_compile() {
        let wasm = |text: &str| wat::parse_str(text).unwrap();
        let (bytes, tag) = compile(&wasm("(module (func (export \"_start\")))"), "m.wasm").unwrap();
        assert!(!bytes.is_empty());
        assert_eq!(tag.len(), 16);
        let e = compile(b"\0asm\x01\0\0\0garbage", "m.wasm").unwrap_err();
        assert!(e.contains("'m.wasm' is not a valid module"), "{e}");
        let e = compile(&wasm("(module (func (export \"main\")))"), "m.wasm").unwrap_err();
        assert!(e.contains("exports no _start"), "{e}");
        let imports = "(module (import \"env\" \"secret\" (func)) (func (export \"_start\")))";
        let e = compile(&wasm(imports), "m.wasm").unwrap_err();
        assert!(e.contains("cannot be linked"), "{e}");
    }
}
