//! A function's logs: what it printed and the platform's lines about each call,
//! read back or followed as they arrive (server-sent events), all or one request's.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use nimbus_core::Error;
use nimbus_core::db::log_line;
use nimbus_core::model::Role;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;

use crate::AppState;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{Path, Query};
use crate::views::{LogLineView, LogList};

/// How often a follower looks for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// Lines are stored in batches by each node: a follower looks this far back again,
/// so a batch committed late is not skipped (lines already sent are not sent twice).
const FOLLOW_OVERLAP_MS: i64 = 10_000;
/// A follower is closed after this long, or when the gateway begins to stop (the
/// client reconnects with `since`).
const FOLLOW_FOR: Duration = Duration::from_secs(3600);

/// Query of the logs endpoint.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Only lines at or after this time (RFC 3339 or epoch ms).
    #[serde(default)]
    since: Option<String>,
    /// At most this many lines, the newest (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
    /// Only the lines of this request.
    #[serde(default)]
    request_id: Option<String>,
    /// Keep the response open and send new lines as they arrive, as server-sent
    /// events (`event: line`, the line as JSON); also chosen by `Accept:
    /// text/event-stream`.
    #[serde(default)]
    follow: Option<bool>,
}

/// `GET /v1/functions/{name}/logs`: the function's recent lines, or a stream of them.
#[utoipa::path(get, path = "/v1/functions/{name}/logs", tag = "invocation",
    params(("name" = String, Path), LogsQuery),
    responses((status = 200, description = "Lines, oldest first, with request ids (or, following, server-sent events)", body = LogList),
        (status = 400, description = "InvalidRequest", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn logs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<Response> {
    caller.require(Role::Invoker)?;
    let tenant = caller.tenant()?.clone();
    // 404 for functions that do not exist (or are another tenant's).
    crate::queries::find_function(&state.db, &tenant, &name).await?;
    let since = match q.since.as_deref() {
        None => 0,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .or_else(|| nimbus_core::parse_rfc3339(s))
            .ok_or_else(|| ApiError::invalid("since must be RFC 3339 or epoch milliseconds"))?,
    };
    if q.request_id
        .as_ref()
        .is_some_and(|r| r.is_empty() || r.len() > 128)
    {
        return Err(ApiError::invalid("request_id must be 1 to 128 characters"));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as u64;
    let follow = q.follow.unwrap_or(false)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
    let filter = Filter {
        tenant_id: tenant.id,
        function: name,
        request_id: q.request_id,
    };
    let lines = read(&state.db, &filter, since, limit)
        .await
        .map_err(Error::from)?;
    if follow {
        let stopping = state.stopping.subscribe();
        return Ok(stream(state.db.clone(), filter, lines, stopping).into_response());
    }
    Ok(axum::Json(LogList {
        lines: lines.into_iter().map(view).collect(),
    })
    .into_response())
}

/// Which lines.
struct Filter {
    tenant_id: String,
    function: String,
    request_id: Option<String>,
}

fn view(l: log_line::Model) -> LogLineView {
    LogLineView {
        timestamp: nimbus_core::rfc3339(l.timestamp_ms),
        request_id: l.request_id,
        stream: l.stream,
        message: l.message,
    }
}

/// The lines at or after `since_ms`: the newest `limit`, oldest first.
async fn read(
    db: &DatabaseConnection,
    f: &Filter,
    since_ms: i64,
    limit: u64,
) -> Result<Vec<log_line::Model>, sea_orm::DbErr> {
    let mut q = log_line::Entity::find()
        .filter(log_line::Column::TenantId.eq(&f.tenant_id))
        .filter(log_line::Column::FunctionName.eq(&f.function))
        .filter(log_line::Column::TimestampMs.gte(since_ms));
    if let Some(r) = &f.request_id {
        q = q.filter(log_line::Column::RequestId.eq(r));
    }
    let mut rows = q
        .order_by_desc(log_line::Column::Id)
        .limit(limit)
        .all(db)
        .await?;
    rows.reverse();
    Ok(rows)
}

/// The lines read so far, then new ones as they are stored, as server-sent events.
fn stream(
    db: DatabaseConnection,
    f: Filter,
    first: Vec<log_line::Model>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Sse<impl tokio_stream::Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(256);
    tokio::spawn(async move {
        let event = |l: log_line::Model| {
            Event::default()
                .event("line")
                .json_data(view(l))
                .unwrap_or_default()
        };
        // Ids sent (or older than the stream: not to be sent) within the overlap
        // window, by time.
        let mut cursor = nimbus_core::now_ms();
        let mut sent: Vec<(i64, i64)> = read(&db, &f, cursor - FOLLOW_OVERLAP_MS, 10_000)
            .await
            .unwrap_or_default()
            .iter()
            .map(|l| (l.timestamp_ms, l.id))
            .collect();
        for l in first {
            cursor = cursor.max(l.timestamp_ms);
            sent.push((l.timestamp_ms, l.id));
            if tx.send(event(l)).await.is_err() {
                return;
            }
        }
        let end = tokio::time::Instant::now() + FOLLOW_FOR;
        while tokio::time::Instant::now() < end {
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                _ = tx.closed() => return,
                _ = stopping.wait_for(|s| *s) => return,
            }
            let from = cursor - FOLLOW_OVERLAP_MS;
            let Ok(rows) = read(&db, &f, from, 1000).await else {
                continue;
            };
            sent.retain(|(t, _)| *t >= from);
            let seen: HashSet<i64> = sent.iter().map(|(_, id)| *id).collect();
            for l in rows.into_iter().filter(|l| !seen.contains(&l.id)) {
                cursor = cursor.max(l.timestamp_ms);
                sent.push((l.timestamp_ms, l.id));
                if tx.send(event(l)).await.is_err() {
                    return;
                }
            }
        }
    });
    use tokio_stream::StreamExt as _;
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok);
    Sse::new(events).keep_alive(KeepAlive::default())
}
