//! The store with every call timed: `comfyfleet_store_operation_duration_seconds` and
//! `comfyfleet_store_operation_errors` by operation, whichever store is underneath.

use std::time::Instant;

use super::*;
use crate::counters::Metrics;

pub struct MeteredStore<S> {
    pub inner: S,
    pub metrics: Metrics,
}

#[async_trait::async_trait]
impl<S: Store> Store for MeteredStore<S> {
    async fn create_join_token(&self, token: &JoinTokenRecord) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.create_join_token(token).await;
        self.metrics.store_call("create_join_token", started.elapsed(), result.is_err());
        result
    }

    async fn list_join_tokens(&self) -> StoreResult<Vec<JoinTokenRecord>> {
        let started = Instant::now();
        let result = self.inner.list_join_tokens().await;
        self.metrics.store_call("list_join_tokens", started.elapsed(), result.is_err());
        result
    }

    async fn join_token(&self, id: &str) -> StoreResult<Option<JoinTokenRecord>> {
        let started = Instant::now();
        let result = self.inner.join_token(id).await;
        self.metrics.store_call("join_token", started.elapsed(), result.is_err());
        result
    }

    async fn delete_join_token(&self, id: &str) -> StoreResult<bool> {
        let started = Instant::now();
        let result = self.inner.delete_join_token(id).await;
        self.metrics.store_call("delete_join_token", started.elapsed(), result.is_err());
        result
    }

    async fn enroll_machine(
        &self,
        token_id: &str,
        secret_sha256: &[u8; 32],
        machine: &NewMachine,
    ) -> StoreResult<Result<StoredMachine, EnrollRefusal>> {
        let started = Instant::now();
        let result = self.inner.enroll_machine(token_id, secret_sha256, machine).await;
        self.metrics.store_call("enroll_machine", started.elapsed(), result.is_err());
        result
    }

    async fn get_machine(&self, id: &MachineId) -> StoreResult<Option<StoredMachine>> {
        let started = Instant::now();
        let result = self.inner.get_machine(id).await;
        self.metrics.store_call("get_machine", started.elapsed(), result.is_err());
        result
    }

    async fn find_machines(&self, prefix: &str, limit: u32) -> StoreResult<Vec<StoredMachine>> {
        let started = Instant::now();
        let result = self.inner.find_machines(prefix, limit).await;
        self.metrics.store_call("find_machines", started.elapsed(), result.is_err());
        result
    }

    async fn list_machines(
        &self,
        after: Option<&MachineId>,
        limit: u32,
        include_revoked: bool,
    ) -> StoreResult<Vec<StoredMachine>> {
        let started = Instant::now();
        let result = self.inner.list_machines(after, limit, include_revoked).await;
        self.metrics.store_call("list_machines", started.elapsed(), result.is_err());
        result
    }

    async fn record_hello(&self, id: &MachineId, hello: &Hello) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.record_hello(id, hello).await;
        self.metrics.store_call("record_hello", started.elapsed(), result.is_err());
        result
    }

    async fn record_inventory(
        &self,
        id: &MachineId,
        inventory: &Inventory,
        at: Timestamp,
    ) -> StoreResult<bool> {
        let started = Instant::now();
        let result = self.inner.record_inventory(id, inventory, at).await;
        self.metrics.store_call("record_inventory", started.elapsed(), result.is_err());
        result
    }

    async fn record_last_seen(&self, seen: &[(MachineId, Timestamp)]) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.record_last_seen(seen).await;
        self.metrics.store_call("record_last_seen", started.elapsed(), result.is_err());
        result
    }

    async fn set_operator_labels(&self, id: &MachineId, labels: &Labels) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.set_operator_labels(id, labels).await;
        self.metrics.store_call("set_operator_labels", started.elapsed(), result.is_err());
        result
    }

    async fn revoke_machine(&self, id: &MachineId, at: Timestamp) -> StoreResult<bool> {
        let started = Instant::now();
        let result = self.inner.revoke_machine(id, at).await;
        self.metrics.store_call("revoke_machine", started.elapsed(), result.is_err());
        result
    }

    async fn create_credential(&self, credential: &CredentialRecord) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.create_credential(credential).await;
        self.metrics.store_call("create_credential", started.elapsed(), result.is_err());
        result
    }

    async fn get_credential(&self, id: &str) -> StoreResult<Option<CredentialRecord>> {
        let started = Instant::now();
        let result = self.inner.get_credential(id).await;
        self.metrics.store_call("get_credential", started.elapsed(), result.is_err());
        result
    }

    async fn list_credentials(&self) -> StoreResult<Vec<CredentialRecord>> {
        let started = Instant::now();
        let result = self.inner.list_credentials().await;
        self.metrics.store_call("list_credentials", started.elapsed(), result.is_err());
        result
    }

    async fn revoke_credential(&self, id: &str, at: Timestamp) -> StoreResult<bool> {
        let started = Instant::now();
        let result = self.inner.revoke_credential(id, at).await;
        self.metrics.store_call("revoke_credential", started.elapsed(), result.is_err());
        result
    }

    async fn append_audit(
        &self,
        at: Timestamp,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.append_audit(at, actor, action, target, detail).await;
        self.metrics.store_call("append_audit", started.elapsed(), result.is_err());
        result
    }

    async fn list_audit(&self, limit: u32) -> StoreResult<Vec<AuditRecord>> {
        let started = Instant::now();
        let result = self.inner.list_audit(limit).await;
        self.metrics.store_call("list_audit", started.elapsed(), result.is_err());
        result
    }

    async fn fleet_id(&self) -> StoreResult<Option<String>> {
        let started = Instant::now();
        let result = self.inner.fleet_id().await;
        self.metrics.store_call("fleet_id", started.elapsed(), result.is_err());
        result
    }

    async fn adopt_fleet_id(&self, fleet_id: &str, at: Timestamp) -> StoreResult<String> {
        let started = Instant::now();
        let result = self.inner.adopt_fleet_id(fleet_id, at).await;
        self.metrics.store_call("adopt_fleet_id", started.elapsed(), result.is_err());
        result
    }

    async fn holds_fleet(&self) -> StoreResult<bool> {
        let started = Instant::now();
        let result = self.inner.holds_fleet().await;
        self.metrics.store_call("holds_fleet", started.elapsed(), result.is_err());
        result
    }

    async fn backup(&self, to: &std::path::Path) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.backup(to).await;
        self.metrics.store_call("backup", started.elapsed(), result.is_err());
        result
    }

    async fn sealed_secret(&self, name: &str) -> StoreResult<Option<SealedSecret>> {
        let started = Instant::now();
        let result = self.inner.sealed_secret(name).await;
        self.metrics.store_call("sealed_secret", started.elapsed(), result.is_err());
        result
    }

    async fn put_sealed_secret(
        &self,
        name: &str,
        secret: &SealedSecret,
        at: Timestamp,
    ) -> StoreResult<SealedSecret> {
        let started = Instant::now();
        let result = self.inner.put_sealed_secret(name, secret, at).await;
        self.metrics.store_call("put_sealed_secret", started.elapsed(), result.is_err());
        result
    }

    async fn set_sealed_secret(&self, name: &str, secret: &SealedSecret, at: Timestamp) -> StoreResult<bool> {
        let started = Instant::now();
        let result = self.inner.set_sealed_secret(name, secret, at).await;
        self.metrics.store_call("set_sealed_secret", started.elapsed(), result.is_err());
        result
    }

    async fn delete_sealed_secret(&self, name: &str) -> StoreResult<bool> {
        let started = Instant::now();
        let result = self.inner.delete_sealed_secret(name).await;
        self.metrics.store_call("delete_sealed_secret", started.elapsed(), result.is_err());
        result
    }

    async fn sealed_secrets(&self, prefix: &str) -> StoreResult<Vec<(String, SealedSecret, Timestamp)>> {
        let started = Instant::now();
        let result = self.inner.sealed_secrets(prefix).await;
        self.metrics.store_call("sealed_secrets", started.elapsed(), result.is_err());
        result
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn prune(&self, what: Prunable, before: Timestamp, limit: u32) -> StoreResult<u64> {
        let started = Instant::now();
        let result = self.inner.prune(what, before, limit).await;
        self.metrics.store_call("prune", started.elapsed(), result.is_err());
        result
    }

    async fn put_environment_revision(&self, revision: &NewRevision) -> StoreResult<(StoredRevision, bool)> {
        let started = Instant::now();
        let result = self.inner.put_environment_revision(revision).await;
        self.metrics.store_call("put_environment_revision", started.elapsed(), result.is_err());
        result
    }

    async fn list_environments(&self) -> StoreResult<Vec<EnvironmentSummary>> {
        let started = Instant::now();
        let result = self.inner.list_environments().await;
        self.metrics.store_call("list_environments", started.elapsed(), result.is_err());
        result
    }

    async fn environment_revisions(&self, environment: &str) -> StoreResult<Vec<StoredRevision>> {
        let started = Instant::now();
        let result = self.inner.environment_revisions(environment).await;
        self.metrics.store_call("environment_revisions", started.elapsed(), result.is_err());
        result
    }

    async fn latest_environment_revision(&self, environment: &str) -> StoreResult<Option<StoredRevision>> {
        let started = Instant::now();
        let result = self.inner.latest_environment_revision(environment).await;
        self.metrics.store_call("latest_environment_revision", started.elapsed(), result.is_err());
        result
    }

    async fn environment_revision(
        &self,
        environment: &str,
        number: u32,
    ) -> StoreResult<Option<StoredRevision>> {
        let started = Instant::now();
        let result = self.inner.environment_revision(environment, number).await;
        self.metrics.store_call("environment_revision", started.elapsed(), result.is_err());
        result
    }

    async fn find_environment_revisions(
        &self,
        environment: &str,
        prefix: &str,
        limit: u32,
    ) -> StoreResult<Vec<StoredRevision>> {
        let started = Instant::now();
        let result = self.inner.find_environment_revisions(environment, prefix, limit).await;
        self.metrics.store_call("find_environment_revisions", started.elapsed(), result.is_err());
        result
    }

    async fn environment_revision_by_id(
        &self,
        environment: &str,
        id: &SpecDigest,
    ) -> StoreResult<Option<StoredRevision>> {
        let started = Instant::now();
        let result = self.inner.environment_revision_by_id(environment, id).await;
        self.metrics.store_call("environment_revision_by_id", started.elapsed(), result.is_err());
        result
    }

    async fn lock(&self, digest: &str) -> StoreResult<Option<StoredLock>> {
        let started = Instant::now();
        let result = self.inner.lock(digest).await;
        self.metrics.store_call("lock", started.elapsed(), result.is_err());
        result
    }

    async fn package_file(&self, sha256: &str) -> StoreResult<Option<PackageFile>> {
        let started = Instant::now();
        let result = self.inner.package_file(sha256).await;
        self.metrics.store_call("package_file", started.elapsed(), result.is_err());
        result
    }

    async fn record_index_files(&self, index_key: &str, files: &[PackageFile]) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.record_index_files(index_key, files).await;
        self.metrics.store_call("record_index_files", started.elapsed(), result.is_err());
        result
    }

    async fn linking_indexes(&self, sha256: &str) -> StoreResult<Vec<String>> {
        let started = Instant::now();
        let result = self.inner.linking_indexes(sha256).await;
        self.metrics.store_call("linking_indexes", started.elapsed(), result.is_err());
        result
    }

    async fn kept_revision_specs(&self) -> StoreResult<Vec<String>> {
        let started = Instant::now();
        let result = self.inner.kept_revision_specs().await;
        self.metrics.store_call("kept_revision_specs", started.elapsed(), result.is_err());
        result
    }

    async fn assign(&self, machine: &MachineId, assignment: &NewAssignment) -> StoreResult<StoredAssignment> {
        let started = Instant::now();
        let result = self.inner.assign(machine, assignment).await;
        self.metrics.store_call("assign", started.elapsed(), result.is_err());
        result
    }

    async fn assignment(&self, machine: &MachineId) -> StoreResult<Option<StoredAssignment>> {
        let started = Instant::now();
        let result = self.inner.assignment(machine).await;
        self.metrics.store_call("assignment", started.elapsed(), result.is_err());
        result
    }

    async fn record_report(
        &self,
        machine: &MachineId,
        report: &ConvergenceReport,
        at: Timestamp,
    ) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.record_report(machine, report, at).await;
        self.metrics.store_call("record_report", started.elapsed(), result.is_err());
        result
    }

    async fn report(&self, machine: &MachineId) -> StoreResult<Option<ConvergenceReport>> {
        let started = Instant::now();
        let result = self.inner.report(machine).await;
        self.metrics.store_call("report", started.elapsed(), result.is_err());
        result
    }

    async fn record_reports(&self, reports: &[(MachineId, ConvergenceReport, Timestamp)]) -> StoreResult<()> {
        let started = Instant::now();
        let result = self.inner.record_reports(reports).await;
        self.metrics.store_call("record_reports", started.elapsed(), result.is_err());
        result
    }

    async fn all_reports(&self) -> StoreResult<Vec<(MachineId, ConvergenceReport, Timestamp)>> {
        let started = Instant::now();
        let result = self.inner.all_reports().await;
        self.metrics.store_call("all_reports", started.elapsed(), result.is_err());
        result
    }

    async fn create_rollout(&self, rollout: &NewRollout) -> StoreResult<RolloutRecord> {
        let started = Instant::now();
        let result = self.inner.create_rollout(rollout).await;
        self.metrics.store_call("create_rollout", started.elapsed(), result.is_err());
        result
    }

    async fn apply_rollout_step(
        &self,
        rollout: u64,
        step: &RolloutStep,
    ) -> StoreResult<Vec<StoredAssignment>> {
        let started = Instant::now();
        let result = self.inner.apply_rollout_step(rollout, step).await;
        self.metrics.store_call("apply_rollout_step", started.elapsed(), result.is_err());
        result
    }

    async fn rollout(&self, id: u64) -> StoreResult<Option<RolloutRecord>> {
        let started = Instant::now();
        let result = self.inner.rollout(id).await;
        self.metrics.store_call("rollout", started.elapsed(), result.is_err());
        result
    }

    async fn list_rollouts(&self, environment: Option<&str>, limit: u32) -> StoreResult<Vec<RolloutRecord>> {
        let started = Instant::now();
        let result = self.inner.list_rollouts(environment, limit).await;
        self.metrics.store_call("list_rollouts", started.elapsed(), result.is_err());
        result
    }

    async fn open_rollouts(&self) -> StoreResult<Vec<RolloutRecord>> {
        let started = Instant::now();
        let result = self.inner.open_rollouts().await;
        self.metrics.store_call("open_rollouts", started.elapsed(), result.is_err());
        result
    }

    async fn rollout_snapshot(&self, id: u64) -> StoreResult<Option<(RolloutRecord, Vec<StoredMachineRow>)>> {
        let started = Instant::now();
        let result = self.inner.rollout_snapshot(id).await;
        self.metrics.store_call("rollout_snapshot", started.elapsed(), result.is_err());
        result
    }

    async fn rollout_machines(&self, rollout: u64) -> StoreResult<Vec<StoredMachineRow>> {
        let started = Instant::now();
        let result = self.inner.rollout_machines(rollout).await;
        self.metrics.store_call("rollout_machines", started.elapsed(), result.is_err());
        result
    }

    async fn rollout_events(&self, rollout: u64, after: u64, limit: u32) -> StoreResult<Vec<StoredEvent>> {
        let started = Instant::now();
        let result = self.inner.rollout_events(rollout, after, limit).await;
        self.metrics.store_call("rollout_events", started.elapsed(), result.is_err());
        result
    }
}
