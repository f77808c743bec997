//! Rollout calls handed from a controller that does not lead to the one that does,
//! through `forwarded_calls`: the taker posts the call and waits; the leader claims
//! it under its epoch, runs it ([`HandedCalls`], which the edge that speaks the
//! call's protocol gives), and writes the answer.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use comfyfleet_config::Role;
use tonic::Code;

use super::{Cluster, FORWARD_TIMEOUT};
use crate::store::notify;
use crate::use_cases::ControllerState;
use crate::use_cases::credentials::auth::Caller;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    Start,
    Undo,
    Pause,
    Resume,
    Abort,
}

impl Forwarded {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Forwarded::Start => "start",
            Forwarded::Undo => "undo",
            Forwarded::Pause => "pause",
            Forwarded::Resume => "resume",
            Forwarded::Abort => "abort",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Forwarded::Start, Forwarded::Undo, Forwarded::Pause, Forwarded::Resume, Forwarded::Abort]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// A handed-over call that did not succeed: a gRPC code (what `forwarded_calls`
/// keeps, whatever edge took the call) and what to tell the caller.
#[derive(Debug, Clone)]
pub struct CallFailed {
    pub code: Code,
    pub message: String,
}

/// Runs the calls other controllers hand this one while it leads: the edge that
/// speaks the calls' protocol decodes, runs and encodes them.
#[async_trait::async_trait]
pub trait HandedCalls: Send + Sync {
    async fn run(
        &self,
        state: &ControllerState,
        kind: Forwarded,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Vec<u8>, CallFailed>;
}

impl Cluster {
    /// Has the leader run a rollout call this controller took, and waits for its
    /// answer.
    /// `body` is the call as the edge that took it encoded it; the answer is the
    /// leader's, encoded the same way.
    pub async fn forward(
        &self,
        kind: Forwarded,
        caller: &Caller,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, CallFailed> {
        let unavailable = |error: sqlx::Error| CallFailed {
            code: Code::Unavailable,
            message: format!("cannot hand the call to the leading controller: database: {error}"),
        };
        let mut answered = self.answered.subscribe();
        let posted = async {
            let mut tx = self.pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO forwarded_calls (kind, body, caller_id, caller_name, caller_role, posted_by) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(kind.as_str())
            .bind(body)
            .bind(&caller.credential_id)
            .bind(&caller.name)
            .bind(caller.role.as_str())
            .bind(&self.id)
            .fetch_one(&mut *tx)
            .await?;
            notify(&mut tx, &self.id, "call", &[&id.to_string()]).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(id)
        };
        let id = posted.await.map_err(unavailable)?;
        tracing::debug!(call = id, kind = kind.as_str(), "handed a rollout call to the leader");
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        loop {
            let answer: Option<(i32, String, Vec<u8>)> = sqlx::query_as(
                "SELECT code, message, answer FROM forwarded_calls WHERE id = $1 AND answered_at IS NOT NULL",
            )
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            if let Some((code, message, answer)) = answer {
                if code != 0 {
                    return Err(CallFailed { code: Code::from_i32(code), message });
                }
                return Ok(answer);
            }
            if Instant::now() > deadline {
                return Err(self.give_up(id).await);
            }
            tokio::select! {
                _ = answered.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// A call nobody answered in time: withdrawn if no leader took it.
    async fn give_up(&self, id: i64) -> CallFailed {
        let withdrawn = sqlx::query(
            "UPDATE forwarded_calls SET answered_at = now(), code = $2, message = 'withdrawn: no answer in time' \
             WHERE id = $1 AND claimed_epoch IS NULL AND answered_at IS NULL",
        )
        .bind(id)
        .bind(Code::DeadlineExceeded as i32)
        .execute(&self.pool)
        .await
        .is_ok_and(|done| done.rows_affected() > 0);
        if withdrawn {
            CallFailed {
                code: Code::Unavailable,
                message: format!(
                    "no controller of the fleet leads the rollout engine just now (none took the call in {} s); \
                     nothing was done — try again, and see `comfyfleet status` on each controller",
                    FORWARD_TIMEOUT.as_secs()
                ),
            }
        } else {
            CallFailed {
                code: Code::DeadlineExceeded,
                message: format!(
                    "the leading controller took the call but did not answer in {} s; \
                     `comfyfleet rollout list` shows whether it ran",
                    FORWARD_TIMEOUT.as_secs()
                ),
            }
        }
    }

    /// The leader runs the calls waiting for it (each once: claimed under its epoch
    /// before it runs), and answers those an earlier leader took and never answered.
    pub(super) async fn take_calls(self: &Arc<Self>, state: &Arc<ControllerState>) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let claimed = async {
            let orphaned: Vec<i64> = sqlx::query_scalar(
                "UPDATE forwarded_calls SET answered_at = now(), code = $2, message = $3 \
                 WHERE answered_at IS NULL AND claimed_epoch IS NOT NULL AND claimed_epoch <> $1 RETURNING id",
            )
            .bind(epoch)
            .bind(Code::Unavailable as i32)
            .bind(
                "the leading controller stopped while it ran this call; `comfyfleet rollout list` shows \
                 whether it took effect before you try again",
            )
            .fetch_all(&self.pool)
            .await?;
            if !orphaned.is_empty() {
                self.announce_answered(&orphaned).await?;
            }
            sqlx::query_as::<_, (i64, String, Vec<u8>, String, String, String)>(
                "UPDATE forwarded_calls SET claimed_epoch = $1 WHERE id IN (SELECT id FROM forwarded_calls \
                 WHERE answered_at IS NULL AND claimed_epoch IS NULL ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 16) \
                 RETURNING id, kind, body, caller_id, caller_name, caller_role",
            )
            .bind(epoch)
            .fetch_all(&self.pool)
            .await
        };
        let calls = match claimed.await {
            Ok(calls) => calls,
            Err(error) => {
                self.complain("cannot take the rollout calls other controllers handed over", &error);
                return;
            }
        };
        // Each in its own task: a call may take seconds, and neither the beat (which
        // renews the lease) nor the notices may wait for it.
        for (id, kind, body, credential_id, name, role) in calls {
            let (cluster, state) = (self.clone(), state.clone());
            tokio::spawn(async move {
                let result = match (Forwarded::parse(&kind), Role::from_str(&role)) {
                    (Some(kind), Ok(role)) => {
                        let caller = Caller { credential_id, name, role };
                        tracing::info!(call = id, kind = kind.as_str(), actor = %caller.actor(), "running a rollout call handed over by another controller");
                        match cluster.calls.get() {
                            Some(calls) => calls.run(&state, kind, &caller, &body).await,
                            None => Err(CallFailed {
                                code: Code::Unavailable,
                                message: "this controller cannot run handed-over calls yet".to_owned(),
                            }),
                        }
                    }
                    _ => Err(CallFailed {
                        code: Code::Internal,
                        message: format!("a handed-over call of unknown kind {kind:?} or role {role:?}"),
                    }),
                };
                cluster.answer(id, result).await;
            });
        }
    }

    async fn answer(&self, id: i64, result: Result<Vec<u8>, CallFailed>) {
        let (code, message, answer) = match result {
            Ok(answer) => (0, String::new(), answer),
            Err(failed) => (failed.code as i32, failed.message, Vec::new()),
        };
        let written = sqlx::query(
            "UPDATE forwarded_calls SET answered_at = now(), code = $2, message = $3, answer = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(code)
        .bind(message)
        .bind(answer)
        .execute(&self.pool)
        .await;
        match written {
            Ok(_) => {
                if let Err(error) = self.announce_answered(&[id]).await {
                    self.complain("cannot tell the other controllers a call was answered", &error);
                }
            }
            Err(error) => self.complain("cannot write the answer to a handed-over call", &error),
        }
    }

    async fn announce_answered(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut connection = self.pool.acquire().await?;
        notify(&mut connection, &self.id, "answered", &ids).await?;
        self.answered.send_modify(|count| *count += 1);
        Ok(())
    }
}
