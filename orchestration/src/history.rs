//! An execution's history: the events one transaction adds, numbered after the
//! execution's last.

use nimbus_core::db::{execution, execution_event};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use serde_json::Value;

/// History events of one transaction, numbered after the execution's last.
pub(crate) struct Events {
    exec: String,
    pub(crate) next: i32,
    rows: Vec<execution_event::ActiveModel>,
    /// The execution row's counter was already written by the caller.
    pub(crate) counted: bool,
}

impl Events {
    pub(crate) fn new(exec: &execution::Model) -> Events {
        Events {
            exec: exec.id.clone(),
            next: exec.events,
            rows: vec![],
            counted: false,
        }
    }

    pub(crate) fn push(&mut self, kind: &str, state: Option<&str>, detail: Value) {
        self.rows.push(execution_event::ActiveModel {
            execution_id: Set(self.exec.clone()),
            seq: Set(self.next),
            at: Set(nimbus_core::now_ms()),
            kind: Set(kind.into()),
            state: Set(state.map(str::to_string)),
            detail: Set(detail.to_string()),
        });
        self.next += 1;
    }

    /// Writes the events and moves the execution's counter (its row is locked by
    /// the transaction).
    pub(crate) async fn commit<C: ConnectionTrait>(self, txn: &C) -> Result<(), sea_orm::DbErr> {
        if self.rows.is_empty() {
            return Ok(());
        }
        if !self.counted {
            execution::Entity::update_many()
                .col_expr(execution::Column::Events, Expr::value(self.next))
                .filter(execution::Column::Id.eq(&self.exec))
                .exec(txn)
                .await?;
        }
        execution_event::Entity::insert_many(self.rows)
            .exec(txn)
            .await?;
        Ok(())
    }
}
