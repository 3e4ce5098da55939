//! The code service: one of the workflow's sub-resource services.
//!
//! - [`package`]: validation of a code package (zip limits, path escapes, zip bombs,
//!   the handler file), used synchronously by the API gateway and again, fully, here.
//! - [`store`]: the object-store trait with its local-directory and S3 backends.
//! - [`CodeService`]: the step handler for `code.store`, `code.verify`, `code.discard`
//!   and `code.release`.
//! - [`wasm`]: a `wasm` function's module checked and compiled at deploy, stored
//!   beside its package for nodes to load.
//! - [`zone_cache`]: the availability zone's code cache tier, between the nodes'
//!   local caches and object storage (`nimbus serve code-cache`).

pub mod package;
pub mod store;
pub mod wasm;
pub mod zone_cache;

use std::sync::Arc;

use async_trait::async_trait;
use nimbus_core::db::Batch;
use nimbus_core::db::package as stored;
use nimbus_core::db::{function, version};
use nimbus_core::step::{Action, StepError, StepHandler, params};
use proto::bus::{Phase, StepCommand, StepResult};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    QueryTrait, Set,
};
use serde_json::json;

pub use store::{DynStore, ObjectStore};

/// Where the gateway puts an uploaded package until `code.store` has checked it.
pub fn staging_key(task_id: &str) -> String {
    format!("staging/{task_id}.zip")
}

/// Where a checked package lives, by content digest.
pub fn package_key(sha256: &str) -> String {
    format!("packages/{sha256}.zip")
}

/// The code service's step handler.
pub struct CodeService {
    /// The package store.
    store: DynStore,
}

impl CodeService {
    /// A handler over `store`.
    pub fn new(store: DynStore) -> Arc<Self> {
        Arc::new(CodeService { store })
    }

    /// `code.store`: check the staged upload fully, then store it once per digest.
    async fn store_package(&self, cmd: &StepCommand) -> Result<serde_json::Value, StepError> {
        let p = params(cmd)?;
        let runtime: nimbus_core::model::Runtime = p["params"]["runtime"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .map_err(|e: nimbus_core::Error| StepError::Permanent(e.to_string()))?;
        let handler = p["params"]["handler"].as_str().unwrap_or_default();
        let key = staging_key(&cmd.task_id);
        let bytes = match self.store.get(&key).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                return Err(StepError::Permanent(
                    "the uploaded package is gone from staging".into(),
                ));
            }
            Err(e) => return Err(StepError::Transient(format!("object store: {e:#}"))),
        };
        let info = package::inspect_fully(&bytes, runtime, handler)
            .map_err(|e| StepError::Permanent(e.to_string()))?;
        if runtime == nimbus_core::model::Runtime::Wasm {
            self.compile_wasm(&bytes, &info.sha256, handler).await?;
        }
        let dest = package_key(&info.sha256);
        let exists = self
            .store
            .exists(&dest)
            .await
            .map_err(|e| StepError::Transient(format!("object store: {e:#}")))?;
        if !exists {
            self.store
                .put(&dest, bytes)
                .await
                .map_err(|e| StepError::Transient(format!("object store: {e:#}")))?;
        }
        Ok(
            json!({"code_sha256": info.sha256, "code_size": info.zipped_size, "unzipped_size": info.unzipped_size, "files": info.files}),
        )
    }

    /// Checks and compiles the package's module (a bad one fails the deploy, saying
    /// why) and stores the compiled form for the nodes, once per digest and engine.
    async fn compile_wasm(&self, zip: &[u8], sha256: &str, handler: &str) -> Result<(), StepError> {
        let module = package::read_file(zip, handler, nimbus_core::model::MAX_UNZIPPED_BYTES)
            .map_err(|e| StepError::Permanent(e.to_string()))?;
        let owned = handler.to_string();
        let (compiled, tag) = tokio::task::spawn_blocking(move || wasm::compile(&module, &owned))
            .await
            .map_err(|e| StepError::Transient(format!("compiling: {e}")))?
            .map_err(StepError::Permanent)?;
        let key = wasm::artifact_key(&tag, sha256, handler);
        let exists = self
            .store
            .exists(&key)
            .await
            .map_err(|e| StepError::Transient(format!("object store: {e:#}")))?;
        if !exists {
            self.store
                .put(&key, compiled.into())
                .await
                .map_err(|e| StepError::Transient(format!("object store: {e:#}")))?;
        }
        Ok(())
    }

    /// `code.verify`: the function's package must exist before a version pins it.
    async fn verify(
        &self,
        txn: &DatabaseTransaction,
        cmd: &StepCommand,
    ) -> Result<serde_json::Value, StepError> {
        let f = function::Entity::find()
            .filter(function::Column::TenantId.eq(&cmd.tenant_id))
            .filter(function::Column::Name.eq(&cmd.function_name))
            .one(txn)
            .await?
            .ok_or_else(|| StepError::Permanent("the function no longer exists".into()))?;
        let sha = f
            .code_sha256
            .ok_or_else(|| StepError::Permanent("the function has no code yet".into()))?;
        let ok = self
            .store
            .exists(&package_key(&sha))
            .await
            .map_err(|e| StepError::Transient(format!("object store: {e:#}")))?;
        if !ok {
            return Err(StepError::Permanent(format!(
                "package {sha} is missing from object storage"
            )));
        }
        Ok(json!({"code_sha256": sha}))
    }

    /// `code.release`: delete the function's packages that nothing else references.
    async fn release(
        &self,
        txn: &DatabaseTransaction,
        cmd: &StepCommand,
    ) -> Result<serde_json::Value, StepError> {
        let p = params(cmd)?;
        let function_id = p["params"]["function_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // (digest, handler) of every version and of $LATEST.
        let mut used: Vec<(String, String)> = version::Entity::find()
            .filter(version::Column::FunctionId.eq(&function_id))
            .all(txn)
            .await?
            .into_iter()
            .map(|v| (v.code_sha256, v.handler))
            .collect();
        if let Some(f) = function::Entity::find_by_id(function_id.clone())
            .one(txn)
            .await?
            && let Some(sha) = f.code_sha256
        {
            used.push((sha, f.handler));
        }
        let mut digests: Vec<String> = used.iter().map(|(s, _)| s.clone()).collect();
        digests.sort();
        digests.dedup();
        let mut deleted = Vec::new();
        for sha in digests {
            let other_functions = function::Entity::find()
                .filter(function::Column::CodeSha256.eq(&sha))
                .filter(function::Column::Id.ne(&function_id))
                .count(txn)
                .await?;
            let other_versions = version::Entity::find()
                .filter(version::Column::CodeSha256.eq(&sha))
                .filter(version::Column::FunctionId.ne(&function_id))
                .count(txn)
                .await?;
            if other_functions + other_versions == 0 && !recently_stored(txn, &sha).await? {
                self.store
                    .delete(&package_key(&sha))
                    .await
                    .map_err(|e| StepError::Transient(format!("object store: {e:#}")))?;
                // Its compiled modules (for this engine; another engine's are
                // orphaned until that engine's release runs).
                let tag = wasm::engine_tag(wasm::compiler());
                for (_, handler) in used
                    .iter()
                    .filter(|(s, h)| *s == sha && h.ends_with(".wasm"))
                {
                    self.store
                        .delete(&wasm::artifact_key(&tag, &sha, handler))
                        .await
                        .map_err(|e| StepError::Transient(format!("object store: {e:#}")))?;
                }
                deleted.push(sha);
            }
        }
        Ok(json!({"deleted_packages": deleted}))
    }
}

/// Whether a `code.store` step stored this digest in the last ten minutes: such a
/// package may belong to a task that has not activated yet, so it is kept.
async fn recently_stored(txn: &DatabaseTransaction, sha: &str) -> Result<bool, StepError> {
    let since = nimbus_core::now_ms() - 10 * 60 * 1000;
    Ok(stored::Entity::find_by_id(sha.to_string())
        .one(txn)
        .await?
        .is_some_and(|p| p.stored_at > since))
}

/// Adds to `w` the record that `code.store` stored the package `output` describes,
/// now.
fn record_stored(w: &mut Batch, output: &serde_json::Value) -> Result<(), StepError> {
    use sea_orm::sea_query::OnConflict;
    let Some(sha) = output["code_sha256"].as_str() else {
        return Err(StepError::Permanent("store reported no digest".into()));
    };
    let upsert = stored::Entity::insert(stored::ActiveModel {
        sha256: Set(sha.to_string()),
        size: Set(output["code_size"].as_i64().unwrap_or(0)),
        stored_at: Set(nimbus_core::now_ms()),
    })
    .on_conflict(
        OnConflict::column(stored::Column::Sha256)
            .update_columns([stored::Column::Size, stored::Column::StoredAt])
            .to_owned(),
    )
    .build(w.backend());
    w.push(upsert);
    Ok(())
}

#[async_trait]
impl StepHandler for CodeService {
    fn service(&self) -> &'static str {
        "code"
    }

    async fn prepare(&self, cmd: &StepCommand) -> Result<Option<serde_json::Value>, StepError> {
        // Inflating and storing a package can take seconds: no transaction held.
        match (cmd.phase(), Action::of(cmd)) {
            (Phase::Forward, Some(Action::Store)) => self.store_package(cmd).await.map(Some),
            _ => Ok(None),
        }
    }

    async fn handle(
        &self,
        txn: &DatabaseTransaction,
        cmd: &StepCommand,
        prepared: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, StepError> {
        match (cmd.phase(), Action::of(cmd)) {
            (Phase::Forward, Some(Action::Store)) => {
                let output = prepared.ok_or_else(|| {
                    StepError::Permanent("store ran without its preparation".into())
                })?;
                let mut w = Batch::new(txn.get_database_backend());
                record_stored(&mut w, &output)?;
                w.run(txn).await?;
                Ok(output)
            }
            (Phase::Forward, Some(Action::Verify)) => self.verify(txn, cmd).await,
            (Phase::Forward, Some(Action::Release)) => self.release(txn, cmd).await,
            // Undoing a store removes only the staged upload (after commit): the stored
            // package is content-addressed and may be shared.
            (Phase::Compensate, Some(Action::Discard)) => Ok(json!({})),
            (phase, _) => Err(StepError::Permanent(format!(
                "code service has no {phase:?} action '{}'",
                cmd.action
            ))),
        }
    }

    fn writes(
        &self,
        cmd: &StepCommand,
        prepared: &Option<serde_json::Value>,
        w: &mut Batch,
    ) -> Option<Result<serde_json::Value, StepError>> {
        // `code.store` only records the package it stored.
        match (cmd.phase(), Action::of(cmd), prepared) {
            (Phase::Forward, Some(Action::Store), Some(output)) => {
                Some(record_stored(w, output).map(|()| output.clone()))
            }
            _ => None,
        }
    }

    async fn after_commit(&self, cmd: &StepCommand, result: &StepResult) {
        // The staged upload is needed until `store` succeeded or failed for good.
        let done_with_staging = match Action::of(cmd) {
            Some(Action::Store) => result.ok || !result.retryable,
            Some(Action::Discard) => true,
            _ => false,
        };
        if done_with_staging && let Err(e) = self.store.delete(&staging_key(&cmd.task_id)).await {
            tracing::warn!(error = %e, task = %cmd.task_id, "could not delete staged upload");
        }
    }
}
