//! The global directory (`nimbus serve directory`): applies identity writes to its
//! own database, appends every change to its log, and streams the log to the regions.
//!
//! The log's `seq` is the order of commits: writes take one lock for their
//! transaction (on PostgreSQL an advisory lock; SQLite has one writer anyway), so a
//! follower that read up to `seq` never sees a smaller one appear later. Identity
//! writes are rare, so one at a time costs nothing. Several directory processes may
//! serve one database: each streams what any of them committed (it looks at the log
//! every 250 ms, and at once after its own writes).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use nimbus_core::Error;
use nimbus_core::db::directory_change;
use nimbus_core::shutdown::Shutdown;
use proto::directory::directory_server::{Directory, DirectoryServer};
use proto::directory::{Change as WireChange, FollowItem, FollowRequest, WriteReply, WriteRequest};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{Change, Write, apply_write};

/// Changes sent per read of the log.
const BATCH: u64 = 500;
/// How often a follower hears from the directory when nothing changes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How often the log is read for changes another directory process committed.
const POLL: Duration = Duration::from_millis(250);

/// The directory service over its database.
pub struct Service {
    db: DatabaseConnection,
    /// The last seq this process committed.
    head: watch::Sender<u64>,
}

impl Service {
    /// The service over `db` (migrated).
    pub async fn open(db: DatabaseConnection) -> Result<Arc<Service>, Error> {
        let last = directory_change::Entity::find()
            .order_by_desc(directory_change::Column::Seq)
            .one(&db)
            .await?
            .map_or(0, |c| c.seq as u64);
        Ok(Arc::new(Service {
            db,
            head: watch::Sender::new(last),
        }))
    }

    /// Applies `w`, logs its changes and commits; answers them with their seqs.
    pub async fn commit(&self, w: Write) -> Result<Vec<WireChange>, Error> {
        let txn = nimbus_core::db::begin_write(&self.db).await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            // One identity write at a time: seqs commit in order.
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(7301466)")
                .await?;
        }
        let changes = apply_write(&txn, w).await?;
        let at = nimbus_core::now_ms();
        let mut out = Vec::with_capacity(changes.len());
        for c in changes {
            let body = serde_json::to_vec(&c).map_err(|e| Error::Internal(e.into()))?;
            let row = directory_change::ActiveModel {
                at: Set(at),
                body: Set(String::from_utf8(body.clone()).expect("JSON is UTF-8")),
                ..Default::default()
            }
            .insert(&txn)
            .await?;
            out.push(WireChange {
                seq: row.seq as u64,
                at,
                body,
            });
        }
        txn.commit().await?;
        if let Some(last) = out.last() {
            self.head.send_if_modified(|h| {
                let newer = last.seq > *h;
                *h = (*h).max(last.seq);
                newer
            });
        }
        Ok(out)
    }

    /// The changes after `after`, at most [`BATCH`].
    async fn read(&self, after: u64) -> Result<Vec<WireChange>, Error> {
        Ok(directory_change::Entity::find()
            .filter(sea_orm::ColumnTrait::gt(
                &directory_change::Column::Seq,
                after as i64,
            ))
            .order_by_asc(directory_change::Column::Seq)
            .limit(BATCH)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|r| WireChange {
                seq: r.seq as u64,
                at: r.at,
                body: r.body.into_bytes(),
            })
            .collect())
    }

    /// Streams the log after `after` into `tx` until the follower goes away.
    async fn stream(
        self: Arc<Self>,
        mut after: u64,
        tx: tokio::sync::mpsc::Sender<Result<FollowItem, Status>>,
    ) {
        use proto::directory::follow_item::Item;
        let mut head = self.head.subscribe();
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            let batch = match self.read(after).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                    return;
                }
            };
            let full = batch.len() as u64 == BATCH;
            for c in batch {
                after = c.seq;
                let item = FollowItem {
                    item: Some(Item::Change(c)),
                };
                if tx.send(Ok(item)).await.is_err() {
                    return;
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                _ = head.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = beat.tick() => {
                    let item = FollowItem { item: Some(Item::Head(after)) };
                    if tx.send(Ok(item)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    }
}

/// The gRPC face of [`Service`].
#[derive(Clone)]
pub struct Grpc(pub Arc<Service>);

#[tonic::async_trait]
impl Directory for Grpc {
    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        let w: Write = serde_json::from_slice(&req.into_inner().write)
            .map_err(|e| Status::invalid_argument(format!("not a directory write: {e}")))?;
        let changes = self.0.commit(w).await.map_err(to_status)?;
        Ok(Response::new(WriteReply { changes }))
    }

    type FollowStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<FollowItem, Status>> + Send + 'static>>;

    async fn follow(
        &self,
        req: Request<FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        let req = req.into_inner();
        tracing::info!(region = %req.region, after = req.after, "a region follows the directory");
        let (tx, rx) = tokio::sync::mpsc::channel(BATCH as usize);
        tokio::spawn(self.0.clone().stream(req.after, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A domain error as a gRPC status; [`from_status`] turns it back.
fn to_status(e: Error) -> Status {
    match e {
        Error::Invalid(m) => Status::invalid_argument(m),
        Error::NotFound { kind, name } => Status::not_found(format!("{kind}\0{name}")),
        Error::Conflict(m) => Status::already_exists(m),
        Error::Unavailable(m) => Status::unavailable(m),
        other => {
            tracing::error!(error = %other, "a directory write failed");
            Status::internal("the directory could not apply the write")
        }
    }
}

/// A status from the directory as the domain error it stands for.
pub fn from_status(s: &Status) -> Error {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument => Error::Invalid(s.message().to_string()),
        Code::NotFound => {
            let (kind, name) = s.message().split_once('\0').unwrap_or(("", s.message()));
            let kind = match kind {
                "Tenant" => "Tenant",
                "ApiKey" => "ApiKey",
                _ => "Resource",
            };
            Error::not_found(kind, name)
        }
        Code::AlreadyExists => Error::Conflict(s.message().to_string()),
        Code::Unauthenticated | Code::PermissionDenied => Error::Unavailable(
            "the identity directory refused this region's token (directory.token differs): \
             admin writes are refused until it is fixed"
                .into(),
        ),
        _ => Error::Unavailable(format!(
            "the identity directory is unreachable ({}): tenants, keys and limits cannot be \
             changed until it is back; nothing was changed",
            s.message()
        )),
    }
}

/// Creates the first admin key in the directory if there is none (its token, to
/// show once).
pub async fn bootstrap_admin(service: &Service) -> Result<Option<String>, Error> {
    use nimbus_core::db::api_key;
    use nimbus_core::model::Role;
    use sea_orm::{ColumnTrait, PaginatorTrait};
    let admins = api_key::Entity::find()
        .filter(api_key::Column::Role.eq(Role::Admin.as_str()))
        .count(&service.db)
        .await?;
    if admins > 0 {
        return Ok(None);
    }
    let (key, token) = super::admin_key_row("bootstrap-admin");
    service.commit(Write::CreateKey { key }).await?;
    Ok(Some(token))
}

/// Serves the directory on `listener` until shutdown. Every call must carry `token`.
pub async fn serve(
    service: Arc<Service>,
    token: Option<String>,
    listener: tokio::net::TcpListener,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let svc = DirectoryServer::with_interceptor(
        Grpc(service),
        proto::auth::RequireToken::new(token.as_deref()),
    );
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(HEARTBEAT))
        .add_service(svc)
        .serve_with_incoming_shutdown(
            proto::incoming(listener),
            async move { shutdown.wait().await },
        )
        .await?;
    Ok(())
}

/// The change a log entry carries.
pub fn decode(c: &WireChange) -> Result<Change, Error> {
    serde_json::from_slice(&c.body)
        .map_err(|e| Error::Internal(anyhow::anyhow!("a directory change does not decode: {e}")))
}
