//! Tables of the orchestration (state machines in Amazon States Language): the
//! machines, their executions, each execution's history, and its runs — the
//! threads of an execution (the top level, each branch of a Parallel, each item of a
//! Map), each at one state, claimed by one worker at a time.

/// A tenant's state machine.
pub mod state_machine {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "state_machines")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(unique_key = "machine_tenant_name")]
        pub tenant_id: String,
        #[sea_orm(unique_key = "machine_tenant_name")]
        pub name: String,
        /// The ASL definition, JSON.
        #[sea_orm(column_type = "Text")]
        pub definition: String,
        pub created_at: i64,
        pub updated_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One execution of a state machine.
pub mod execution {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "executions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(indexed)]
        pub tenant_id: String,
        #[sea_orm(unique_key = "execution_machine_name")]
        pub machine_id: String,
        pub machine_name: String,
        /// The caller's name for it (unique per machine: a second start with the same
        /// name is the same execution), else its id.
        #[sea_orm(unique_key = "execution_machine_name")]
        pub name: String,
        /// The definition it runs, as it was when it started.
        #[sea_orm(column_type = "Text")]
        pub definition: String,
        /// RUNNING, SUCCEEDED, FAILED, TIMED_OUT or ABORTED.
        #[sea_orm(indexed)]
        pub status: String,
        #[sea_orm(column_type = "Text")]
        pub input: String,
        #[sea_orm(column_type = "Text", nullable)]
        pub output: Option<String>,
        pub error: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub cause: Option<String>,
        pub started_at: i64,
        pub stopped_at: Option<i64>,
        /// When the machine's `TimeoutSeconds` runs out.
        pub deadline_at: Option<i64>,
        /// History events so far (the next event's number).
        pub events: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An execution's history, in order.
pub mod execution_event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "execution_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub execution_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i32,
        pub at: i64,
        /// ExecutionStarted, StateEntered, StateExited, TaskScheduled, TaskSucceeded,
        /// TaskFailed, …
        pub kind: String,
        pub state: Option<String>,
        /// Input, output, error and cause, as they apply, JSON.
        #[sea_orm(column_type = "Text")]
        pub detail: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A thread of an execution at one state.
pub mod execution_run {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "execution_runs")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        #[sea_orm(indexed)]
        pub execution_id: String,
        /// The run of the Parallel or Map that made this one.
        #[sea_orm(indexed)]
        pub parent: Option<String>,
        /// Which branch or item of its parent.
        pub slot: i32,
        /// Where its machine is in the definition: "" for the top, else
        /// `{parent scope}/{state}#{branch}` (Parallel) or `{parent scope}/{state}` (Map).
        pub scope: String,
        /// The state it is at.
        pub state: String,
        /// That state's input, JSON.
        #[sea_orm(column_type = "Text")]
        pub input: String,
        /// ready (a worker may take it when due), blocked (waiting for its children),
        /// queued (a Map item waiting for room), done, failed, cancelled.
        #[sea_orm(indexed)]
        pub status: String,
        /// When it may run (a Wait, a retry's backoff).
        #[sea_orm(indexed)]
        pub due_at: i64,
        /// A worker holds it until then.
        pub lease_until: i64,
        /// Attempts so far per retrier of the current state, JSON array.
        pub attempts: String,
        /// Children not finished yet.
        pub pending: i32,
        /// The result, or the error and cause, when finished.
        #[sea_orm(column_type = "Text", nullable)]
        pub result: Option<String>,
        pub error: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub cause: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
