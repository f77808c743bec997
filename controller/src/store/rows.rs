//! What both stores share: turning rows into records, whichever database they came
//! from, and the column lists their queries select.

use std::str::FromStr;

use comfyfleet_config::assignment::MachineAssignment;
use comfyfleet_config::spec::{DriverCompat, RolloutPolicy, SpecDigest};
use comfyfleet_config::{AssignmentReason, ConvergenceReport, Inventory, Labels, MachineId, Role};
use jiff::Timestamp;
use sqlx::Row;

use super::{
    CredentialRecord, JoinTokenRecord, StoreError, StoreResult, StoredAssignment, StoredMachine,
    StoredRevision,
};
use crate::store::rollout_model::{
    MachineRow, NewEvent, RevisionRef, RolloutKind, RolloutRecord, RolloutState, StoredEvent,
    StoredMachineRow,
};

/// A value a column of either database decodes into.
pub(in crate::store) trait ColumnValue:
    for<'r> sqlx::Decode<'r, sqlx::Sqlite>
    + sqlx::Type<sqlx::Sqlite>
    + for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
{
}

impl<T> ColumnValue for T where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
{
}

/// A row of either database.
pub(in crate::store) trait Columns {
    fn column<T: ColumnValue>(&self, column: &'static str) -> StoreResult<T>;
}

impl Columns for sqlx::sqlite::SqliteRow {
    fn column<T: ColumnValue>(&self, column: &'static str) -> StoreResult<T> {
        self.try_get(column).map_err(database("decoding a row"))
    }
}

impl Columns for sqlx::postgres::PgRow {
    fn column<T: ColumnValue>(&self, column: &'static str) -> StoreResult<T> {
        self.try_get(column).map_err(database("decoding a row"))
    }
}

pub(in crate::store) fn database(doing: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { doing, source }
}

pub(in crate::store) fn corrupt(what: &'static str) -> impl FnOnce(String) -> StoreError {
    move |detail| StoreError::Corrupt { what, detail }
}

pub(in crate::store) fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

pub(in crate::store) fn timestamp(what: &'static str, value: i64) -> StoreResult<Timestamp> {
    Timestamp::from_millisecond(value).map_err(|e| corrupt(what)(e.to_string()))
}

pub(in crate::store) fn optional_timestamp(
    what: &'static str,
    value: Option<i64>,
) -> StoreResult<Option<Timestamp>> {
    value.map(|v| timestamp(what, v)).transpose()
}

pub(in crate::store) fn labels_json(labels: &Labels) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".to_owned())
}

pub(in crate::store) fn labels_from(what: &'static str, json: &str) -> StoreResult<Labels> {
    serde_json::from_str(json).map_err(|e| corrupt(what)(e.to_string()))
}

pub(in crate::store) fn digest(what: &'static str, bytes: Vec<u8>) -> StoreResult<[u8; 32]> {
    bytes.try_into().map_err(|_| corrupt(what)("digest is not 32 bytes".into()))
}

pub(in crate::store) fn count(what: &'static str, value: i64) -> StoreResult<u32> {
    u32::try_from(value).map_err(|_| corrupt(what)(format!("{value} is out of range")))
}

pub(in crate::store) fn get<T: ColumnValue>(row: &impl Columns, column: &'static str) -> StoreResult<T> {
    row.column(column)
}

pub(in crate::store) fn machine_from_row(row: &impl Columns) -> StoreResult<StoredMachine> {
    let id: String = get(row, "id")?;
    let inventory = get::<Option<String>>(row, "inventory")?
        .map(|json| serde_json::from_str::<Inventory>(&json))
        .transpose()
        .map_err(|e| corrupt("machine inventory")(format!("machine {id}: {e}")))?;
    Ok(StoredMachine {
        id: MachineId::from_str(&id).map_err(|e| corrupt("machine id")(e.to_string()))?,
        hostname: get(row, "hostname")?,
        enrolled_at: timestamp("enrolled_at", get(row, "enrolled_at")?)?,
        revoked_at: optional_timestamp("revoked_at", get(row, "revoked_at")?)?,
        cert_sha256: get(row, "cert_sha256")?,
        join_token_id: get(row, "join_token_id")?,
        token_labels: labels_from("token labels", &get::<String>(row, "token_labels")?)?,
        agent_labels: labels_from("agent labels", &get::<String>(row, "agent_labels")?)?,
        operator_labels: labels_from("operator labels", &get::<String>(row, "operator_labels")?)?,
        inventory,
        inventory_updated_at: optional_timestamp("inventory_updated_at", get(row, "inventory_updated_at")?)?,
        agent_version: get(row, "agent_version")?,
        last_seen: optional_timestamp("last_seen", get(row, "last_seen")?)?,
        remote_address: get(row, "remote_address")?,
        assignment: joined_assignment(row)?,
        report: joined_report(row)?,
    })
}

pub(in crate::store) fn join_token_from_row(row: &impl Columns) -> StoreResult<JoinTokenRecord> {
    Ok(JoinTokenRecord {
        id: get(row, "id")?,
        secret_sha256: digest("join token digest", get(row, "secret_sha256")?)?,
        created_at: timestamp("created_at", get(row, "created_at")?)?,
        expires_at: timestamp("expires_at", get(row, "expires_at")?)?,
        uses_allowed: get::<Option<i64>>(row, "uses_allowed")?
            .map(|v| count("uses_allowed", v))
            .transpose()?,
        uses: count("uses", get(row, "uses")?)?,
        labels: labels_from("join token labels", &get::<String>(row, "labels")?)?,
        description: get(row, "description")?,
        created_by: get(row, "created_by")?,
    })
}

pub(in crate::store) fn credential_from_row(row: &impl Columns) -> StoreResult<CredentialRecord> {
    Ok(CredentialRecord {
        id: get(row, "id")?,
        name: get(row, "name")?,
        role: Role::from_str(&get::<String>(row, "role")?)
            .map_err(|e| corrupt("credential role")(e.to_string()))?,
        secret_sha256: digest("credential digest", get(row, "secret_sha256")?)?,
        created_at: timestamp("created_at", get(row, "created_at")?)?,
        revoked_at: optional_timestamp("revoked_at", get(row, "revoked_at")?)?,
        created_by: get(row, "created_by")?,
    })
}

pub(in crate::store) const MACHINE_COLUMNS: &str = "machines.id, hostname, enrolled_at, revoked_at, cert_sha256, join_token_id, \
     token_labels, agent_labels, operator_labels, inventory, inventory_updated_at, agent_version, last_seen, \
     remote_address";

pub(in crate::store) const REVISION_COLUMNS: &str =
    "environment, number, id, spec_json, created_at, created_by";

pub(in crate::store) fn revision_from_row(row: &impl Columns) -> StoreResult<StoredRevision> {
    let id: String = get(row, "id")?;
    Ok(StoredRevision {
        environment: get(row, "environment")?,
        number: count("revision number", get(row, "number")?)?,
        id: SpecDigest::from_str(&id).map_err(corrupt("revision id"))?,
        spec_json: get(row, "spec_json")?,
        created_at: timestamp("revision created_at", get(row, "created_at")?)?,
        created_by: get(row, "created_by")?,
    })
}

/// What a machine query joins to carry the assignment and the latest report.
pub(in crate::store) const ASSIGNMENT_JOINS: &str = "LEFT JOIN machine_assignments AS a ON a.machine_id = machines.id \
     LEFT JOIN machine_reports AS r ON r.machine_id = machines.id";

pub(in crate::store) const ASSIGNMENT_COLUMNS: &str = "machine_id, generation, environment, revision_number, revision_id, plan_json, \
     torch, activate, reason, assigned_at, assigned_by";

pub(in crate::store) fn generation(value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt("assignment generation")(format!("{value} is negative")))
}

pub(in crate::store) fn reason(text: &str) -> StoreResult<AssignmentReason> {
    AssignmentReason::from_str(text).map_err(corrupt("assignment reason"))
}

pub(in crate::store) fn revision_id(text: &str) -> StoreResult<SpecDigest> {
    SpecDigest::from_str(text).map_err(corrupt("assignment revision id"))
}

pub(in crate::store) fn report_from_json(json: &str) -> StoreResult<ConvergenceReport> {
    serde_json::from_str(json).map_err(|e| corrupt("convergence report")(e.to_string()))
}

/// The assignment joined into a machine row, if the machine has one.
pub(in crate::store) fn joined_assignment(row: &impl Columns) -> StoreResult<Option<MachineAssignment>> {
    let Some(value) = get::<Option<i64>>(row, "assignment_generation")? else {
        return Ok(None);
    };
    Ok(Some(MachineAssignment {
        generation: generation(value)?,
        environment: get(row, "assignment_environment")?,
        revision_number: count("assignment revision number", get(row, "assignment_revision_number")?)?,
        revision_id: revision_id(&get::<String>(row, "assignment_revision_id")?)?,
        activate: get(row, "assignment_activate")?,
        reason: reason(&get::<String>(row, "assignment_reason")?)?,
        assigned_at: timestamp("assigned_at", get(row, "assignment_assigned_at")?)?,
        assigned_by: get(row, "assignment_assigned_by")?,
        torch: get(row, "assignment_torch")?,
        driver_compat: match get::<Option<String>>(row, "assignment_driver_compat")?.as_deref() {
            Some("minor") => DriverCompat::Minor,
            _ => DriverCompat::Exact,
        },
    }))
}

/// The latest report joined into a machine row, if the agent sent one.
pub(in crate::store) fn joined_report(row: &impl Columns) -> StoreResult<Option<ConvergenceReport>> {
    get::<Option<String>>(row, "report_json")?.as_deref().map(report_from_json).transpose()
}

pub(in crate::store) fn assignment_from_row(row: &impl Columns) -> StoreResult<StoredAssignment> {
    let machine_id: String = get(row, "machine_id")?;
    Ok(StoredAssignment {
        machine_id: MachineId::from_str(&machine_id).map_err(|e| corrupt("machine id")(e.to_string()))?,
        generation: generation(get(row, "generation")?)?,
        environment: get(row, "environment")?,
        revision_number: count("assignment revision number", get(row, "revision_number")?)?,
        revision_id: revision_id(&get::<String>(row, "revision_id")?)?,
        plan_json: get(row, "plan_json")?,
        torch: get(row, "torch")?,
        activate: get(row, "activate")?,
        reason: reason(&get::<String>(row, "reason")?)?,
        assigned_at: timestamp("assigned_at", get(row, "assigned_at")?)?,
        assigned_by: get(row, "assigned_by")?,
    })
}

pub(in crate::store) const ROLLOUT_COLUMNS: &str = "id, environment, revision_number, revision_id, kind, policy_json, state, reason, \
     budget_exceeded, named_machines, batch_size, undo_of, stalled, created_at, created_by, finished_at";

pub(in crate::store) const ROW_COLUMNS: &str = "m.machine_id, m.ordinal, m.phase, m.status, m.generation, m.plan_json, m.torch, \
     m.from_environment, m.from_revision_number, m.detail, m.since, m.activations, m.attempts, \
     m.rollback_tried, m.stalled, m.joined, machines.hostname";

pub(in crate::store) fn id_from(what: &'static str, value: i64) -> StoreResult<u64> {
    u64::try_from(value).map_err(|_| corrupt(what)(format!("{value} is negative")))
}

pub(in crate::store) fn rollout_from_row(row: &impl Columns) -> StoreResult<RolloutRecord> {
    let policy: RolloutPolicy = serde_json::from_str(&get::<String>(row, "policy_json")?)
        .map_err(|e| corrupt("rollout policy")(e.to_string()))?;
    Ok(RolloutRecord {
        id: id_from("rollout id", get(row, "id")?)?,
        environment: get(row, "environment")?,
        revision_number: count("rollout revision number", get(row, "revision_number")?)?,
        revision_id: SpecDigest::from_str(&get::<String>(row, "revision_id")?)
            .map_err(corrupt("rollout revision id"))?,
        kind: RolloutKind::from_str(&get::<String>(row, "kind")?).map_err(corrupt("rollout kind"))?,
        policy,
        state: RolloutState::from_str(&get::<String>(row, "state")?).map_err(corrupt("rollout state"))?,
        reason: get(row, "reason")?,
        budget_exceeded: get(row, "budget_exceeded")?,
        named_machines: get(row, "named_machines")?,
        batch_size: count("rollout batch size", get(row, "batch_size")?)?,
        undo_of: get::<Option<i64>>(row, "undo_of")?.map(|n| count("rollout undo_of", n)).transpose()?,
        stalled: get(row, "stalled")?,
        created_at: timestamp("rollout created_at", get(row, "created_at")?)?,
        created_by: get(row, "created_by")?,
        finished_at: optional_timestamp("rollout finished_at", get(row, "finished_at")?)?,
    })
}

pub(in crate::store) fn machine_row_from(row: &impl Columns) -> StoreResult<StoredMachineRow> {
    let machine_id: String = get(row, "machine_id")?;
    let from_environment: Option<String> = get(row, "from_environment")?;
    let from_number: Option<i64> = get(row, "from_revision_number")?;
    let from = match (from_environment, from_number) {
        (Some(environment), Some(number)) => {
            Some(RevisionRef { environment, number: count("rollout from revision", number)? })
        }
        _ => None,
    };
    Ok(StoredMachineRow {
        row: MachineRow {
            machine_id: MachineId::from_str(&machine_id).map_err(|e| corrupt("machine id")(e.to_string()))?,
            ordinal: count("rollout ordinal", get(row, "ordinal")?)?,
            phase: count("rollout phase", get(row, "phase")?)?,
            status: get::<String>(row, "status")?.parse().map_err(corrupt("rollout machine status"))?,
            generation: id_from("rollout generation", get(row, "generation")?)?,
            plan_json: get(row, "plan_json")?,
            torch: get(row, "torch")?,
            from,
            detail: get(row, "detail")?,
            since: timestamp("rollout machine since", get(row, "since")?)?,
            activations: count("rollout activations", get(row, "activations")?)?,
            attempts: count("rollout attempts", get(row, "attempts")?)?,
            rollback_tried: get(row, "rollback_tried")?,
            stalled: get(row, "stalled")?,
            joined: get(row, "joined")?,
        },
        hostname: get(row, "hostname")?,
    })
}

pub(in crate::store) fn event_from(row: &impl Columns) -> StoreResult<StoredEvent> {
    let machine_id: String = get(row, "machine_id")?;
    Ok(StoredEvent {
        id: id_from("rollout event id", get(row, "id")?)?,
        rollout_id: id_from("rollout id", get(row, "rollout_id")?)?,
        event: NewEvent {
            at: timestamp("rollout event at", get(row, "at")?)?,
            machine_id: if machine_id.is_empty() {
                None
            } else {
                Some(MachineId::from_str(&machine_id).map_err(|e| corrupt("machine id")(e.to_string()))?)
            },
            kind: get(row, "kind")?,
            from: get(row, "from_status")?,
            detail: get(row, "detail")?,
            phase: count("rollout event phase", get(row, "phase")?)?,
        },
    })
}

pub(in crate::store) fn policy_json(policy: &RolloutPolicy) -> StoreResult<String> {
    serde_json::to_string(policy)
        .map_err(|e| StoreError::Corrupt { what: "rollout policy", detail: format!("cannot serialise: {e}") })
}
