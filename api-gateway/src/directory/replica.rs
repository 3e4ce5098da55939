//! A region's replica of the global directory, kept by every gateway of the region.
//!
//! Each gateway follows the directory's change log from the region's cursor (the
//! `replica_cursors` row) and stores each change in the region's database, moving the
//! cursor in the same transaction: the cursor update is conditional (`seq < this`),
//! so when several gateways follow at once exactly one stores each change and the
//! others see it stored. Every gateway still drops the cached keys and tenants each
//! change touches, so a revoked key stops working in every gateway of every region as
//! soon as the change arrives.
//!
//! While the directory is unreachable the region keeps authenticating from what the
//! replica holds; `/readyz` says the link is down and since when. On reconnecting, the
//! log is read from the cursor: every change missed meanwhile is applied, in order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nimbus_core::Error;
use nimbus_core::db::{region, replica_cursor};
use nimbus_core::shutdown::Shutdown;
use proto::auth::AddToken;
use proto::directory::directory_client::DirectoryClient;
use proto::directory::follow_item::Item;
use proto::directory::{FollowRequest, WriteRequest};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use serde::Serialize;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::server::{HEARTBEAT, decode, from_status};
use super::{Change, Write};

/// The replica cursor's name.
const CURSOR: &str = "directory";
/// A link silent this long (three heartbeats) is down.
const SILENCE: Duration = Duration::from_secs(3);
/// The longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long a write waits for its change to reach this region before answering.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Where this gateway's identity writes go.
pub enum Identity {
    /// The region's own database is the directory.
    Local,
    /// The global directory, followed by this region's replica.
    Directory(Arc<Replica>),
}

/// The state of the link to the directory, as `/readyz` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Link {
    /// Whether the directory's log is being followed now.
    pub connected: bool,
    /// Since when (epoch ms) the link has been up, or down.
    pub since_ms: i64,
    /// The last change this region applied.
    pub applied: u64,
    /// The last change the directory reported.
    pub head: u64,
    /// Why the link is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// This region as the catalogue lists it.
#[derive(Debug, Clone)]
pub struct ThisRegion {
    pub name: String,
    pub url: Option<String>,
    pub zones: Vec<String>,
}

/// A gateway's side of the directory.
pub struct Replica {
    db: DatabaseConnection,
    region: ThisRegion,
    client: DirectoryClient<InterceptedService<Channel, AddToken>>,
    /// The highest change known stored in this region.
    applied: watch::Sender<u64>,
    link: Mutex<Link>,
    write_timeout: Duration,
}

impl Replica {
    /// A replica of the directory at `endpoint` in the region's database `db`. It does
    /// not connect yet: a region starts, and serves, while the directory is down.
    pub fn new(
        db: DatabaseConnection,
        endpoint: &str,
        token: Option<&str>,
        region: ThisRegion,
        write_timeout: Duration,
    ) -> anyhow::Result<Arc<Replica>> {
        use anyhow::Context as _;
        let channel = Endpoint::from_shared(endpoint.to_string())
            .with_context(|| format!("directory.endpoint '{endpoint}' is not a URL"))?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(HEARTBEAT)
            .keep_alive_timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(Arc::new(Replica {
            db,
            region,
            client: DirectoryClient::with_interceptor(channel, AddToken::new(token)),
            applied: watch::Sender::new(0),
            link: Mutex::new(Link {
                connected: false,
                since_ms: nimbus_core::now_ms(),
                applied: 0,
                head: 0,
                error: Some("not connected yet".into()),
            }),
            write_timeout,
        }))
    }

    /// The link's state now.
    pub fn link(&self) -> Link {
        let mut l = self.link.lock().expect("link lock").clone();
        l.applied = *self.applied.borrow();
        l
    }

    fn set_link(&self, connected: bool, error: Option<String>) {
        let mut l = self.link.lock().expect("link lock");
        if l.connected != connected {
            l.since_ms = nimbus_core::now_ms();
            if connected {
                tracing::info!("directory link up");
            } else {
                tracing::warn!(error = ?error, "directory link down: authenticating from this region's replica");
            }
        }
        l.connected = connected;
        l.error = error;
    }

    /// Sends `w` to the directory and waits (a little) until this region has its
    /// changes, so the caller's next request here sees them. Refused with 503 when
    /// the directory does not answer in time: then nothing was changed, or (if the
    /// answer alone was lost) the change arrives like any other.
    pub async fn write(&self, w: Write) -> Result<Vec<Change>, Error> {
        let body = serde_json::to_vec(&w).map_err(|e| Error::Internal(e.into()))?;
        let mut client = self.client.clone();
        let call = client.write(WriteRequest { write: body });
        let reply = match tokio::time::timeout(self.write_timeout, call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return Err(from_status(&s)),
            Err(_) => {
                return Err(Error::Unavailable(format!(
                    "the identity directory did not answer within {} ms: tenants, keys and \
                     limits cannot be changed until it is back",
                    self.write_timeout.as_millis()
                )));
            }
        };
        let changes = reply
            .changes
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(last) = reply.changes.last().map(|c| c.seq) {
            let mut rx = self.applied.subscribe();
            let arrived =
                tokio::time::timeout(CATCH_UP, rx.wait_for(|applied| *applied >= last)).await;
            if arrived.is_err() {
                tracing::warn!(
                    seq = last,
                    "a directory change is committed but has not reached this region yet"
                );
            }
        }
        Ok(changes)
    }

    /// The region's cursor, created at 0 if missing.
    async fn cursor(&self) -> Result<u64, Error> {
        if let Some(c) = replica_cursor::Entity::find_by_id(CURSOR.to_string())
            .one(&self.db)
            .await?
        {
            return Ok(c.seq.max(0) as u64);
        }
        let made = replica_cursor::ActiveModel {
            name: Set(CURSOR.into()),
            seq: Set(0),
            updated_at: Set(nimbus_core::now_ms()),
        }
        .insert(&self.db)
        .await;
        match made {
            Ok(_) => Ok(0),
            // Another gateway made it first.
            Err(e) if nimbus_core::db::is_unique_violation(&e) => Box::pin(self.cursor()).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Stores change `seq` unless the region has it already.
    async fn store(&self, seq: u64, change: &Change) -> Result<(), Error> {
        let txn = nimbus_core::db::begin_write(&self.db).await?;
        let moved = replica_cursor::Entity::update_many()
            .col_expr(replica_cursor::Column::Seq, Expr::value(seq as i64))
            .col_expr(
                replica_cursor::Column::UpdatedAt,
                Expr::value(nimbus_core::now_ms()),
            )
            .filter(replica_cursor::Column::Name.eq(CURSOR))
            .filter(replica_cursor::Column::Seq.lt(seq as i64))
            .exec(&txn)
            .await?
            .rows_affected;
        if moved == 1 {
            super::store_change(&txn, change).await?;
            txn.commit().await?;
        }
        self.applied.send_if_modified(|a| {
            let newer = seq > *a;
            *a = (*a).max(seq);
            newer
        });
        Ok(())
    }

    /// Follows the directory until shutdown, storing each change and handing it to
    /// `touched` (which drops what the gateway cached of it). Reconnects by itself.
    pub async fn follow<F, Fut>(self: Arc<Self>, touched: F, mut shutdown: Shutdown)
    where
        F: Fn(Change) -> Fut + Send,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            let run = self.follow_once(&touched);
            let why = tokio::select! {
                r = run => r,
                _ = shutdown.wait() => return,
            };
            self.set_link(false, Some(why));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's worth of following; returns why it ended.
    async fn follow_once<F, Fut>(&self, touched: &F) -> String
    where
        F: Fn(Change) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let after = match self.cursor().await {
            Ok(c) => c,
            Err(e) => return format!("reading this region's cursor: {e}"),
        };
        self.applied.send_if_modified(|a| {
            let newer = after > *a;
            *a = (*a).max(after);
            newer
        });
        let mut client = self.client.clone();
        let req = FollowRequest {
            after,
            region: self.region.name.clone(),
        };
        let mut stream = match client.follow(req).await {
            Ok(s) => s.into_inner(),
            Err(s) => return from_status(&s).to_string(),
        };
        self.set_link(true, None);
        self.announce_region().await;
        loop {
            let item = match tokio::time::timeout(SILENCE, stream.message()).await {
                Err(_) => return format!("no word from the directory for {SILENCE:?}"),
                Ok(Err(s)) => return from_status(&s).to_string(),
                Ok(Ok(None)) => return "the directory closed the stream".into(),
                Ok(Ok(Some(item))) => item,
            };
            match item.item {
                Some(Item::Head(h)) => {
                    self.link.lock().expect("link lock").head = h;
                }
                Some(Item::Change(c)) => {
                    let change = match decode(&c) {
                        Ok(ch) => ch,
                        Err(e) => return e.to_string(),
                    };
                    if let Err(e) = self.store(c.seq, &change).await {
                        return format!("storing change {}: {e}", c.seq);
                    }
                    {
                        let mut l = self.link.lock().expect("link lock");
                        l.head = l.head.max(c.seq);
                    }
                    touched(change).await;
                }
                None => {}
            }
        }
    }

    /// Puts this region in the catalogue (a no-op when it is there unchanged).
    async fn announce_region(&self) {
        let Some(url) = &self.region.url else { return };
        let w = Write::PutRegion {
            region: region::Model {
                name: self.region.name.clone(),
                url: url.clone(),
                zones: serde_json::to_string(&self.region.zones).expect("names serialise"),
                updated_at: nimbus_core::now_ms(),
            },
        };
        let body = serde_json::to_vec(&w).expect("writes serialise");
        let mut client = self.client.clone();
        if let Err(s) = client.write(WriteRequest { write: body }).await {
            tracing::warn!(error = %s.message(), "could not put this region in the catalogue");
        }
    }
}
