//! Why an enqueue run could not do its work. Each variant is a decision for
//! the caller: the CLI maps them to its exit codes, the API to statuses.

/// An enqueue run's failure. Rejected *lines* are not errors (they are
/// counted in the report and handed to the observer); these stop the run.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// Settings that break the campaign's rules, every bad field named
    /// (`field: message`); the CLI shows each as its flag.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<tocsin_core::campaign::FieldError>),
    /// The request conflicts with what exists or is configured: a cancelled
    /// campaign, a changed message without permission, an unconfigured
    /// provider, another run on the same campaign.
    #[error("{0}")]
    Refused(String),
    /// The contact list cannot be read at all (missing file, bad header).
    #[error("{0}")]
    InputRejected(String),
    /// A service the run needs is down; re-running finishes the job.
    #[error(
        "{service} is unreachable: {detail} (is it running? deploy/local/up.sh starts the local services)"
    )]
    Unreachable { service: &'static str, detail: String },
    /// Stopped before it finished (the stop token); re-running finishes the job.
    #[error("interrupted; run the same command again to finish (nothing is enqueued twice)")]
    Interrupted,
    /// Anything else, with what was being done.
    #[error("{doing}: {detail}")]
    Failed { doing: &'static str, detail: String },
}

impl EnqueueError {
    /// A database error while `doing`: a lost connection is "unreachable"
    /// (re-run when it is back), anything else keeps its text.
    pub(crate) fn db(doing: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |e| match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => Self::Unreachable {
                service: "PostgreSQL (TOCSIN_DATABASE_URL)",
                detail: format!("{doing}: {e}; re-running the same command finishes the job"),
            },
            other => Self::Failed { doing, detail: other.to_string() },
        }
    }

    /// A RabbitMQ error while `doing`.
    pub(crate) fn broker(doing: &'static str) -> impl FnOnce(lapin::Error) -> Self {
        move |e| Self::Unreachable {
            service: "RabbitMQ (TOCSIN_AMQP_URL)",
            detail: format!(
                "{doing}: {e}; contacts whose jobs were not confirmed stay unconfirmed, and re-running the \
                 same command publishes them"
            ),
        }
    }
}
