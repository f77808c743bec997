//! The operators' API: join tokens, machines, credentials, environments and the audit
//! log. Every call is authenticated; every change is checked against the caller's
//! role and written to the audit log. Environment calls are decided in
//! `environment_service`, rollouts and rollbacks in `rollout_service`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use comfyfleet_config::fleet_report::ReportKind;
use comfyfleet_config::labels::validate_key;
use comfyfleet_config::source_credentials::SourceSecret;
use comfyfleet_config::text::Escaped;
use comfyfleet_config::{JoinToken, MachineId, MachineRecord, OperatorCredential, Role};
use comfyfleet_proto::v1 as pb;
use comfyfleet_proto::{labels_from_wire, labels_to_wire, role_from_wire, timestamp_to_wire};
use jiff::{SignedDuration, Timestamp};
use tonic::{Request, Response, Status};

use crate::auth::{Caller, authenticate};
use crate::presence::{KickReason, Presence};
use crate::state::ControllerState;
use crate::store::{AuditEntry, CredentialRecord, JoinTokenRecord, Store, StoredMachine, audited};
use crate::{cache_service, environment_service, rollout_service, rollouts, secrets};

const DEFAULT_PAGE: u32 = 200;
const MAX_PAGE: u32 = 1000;
const MAX_DESCRIPTION: usize = 256;

pub struct FleetApi {
    state: Arc<ControllerState>,
}

impl FleetApi {
    pub fn new(state: Arc<ControllerState>) -> Self {
        Self { state }
    }

    async fn caller<T>(&self, request: &Request<T>, needed: Role) -> Result<Caller, Status> {
        let caller = authenticate(self.state.store.as_ref(), request).await?;
        caller.require(needed)?;
        Ok(caller)
    }

    fn machine_record(&self, machine: StoredMachine) -> MachineRecord {
        machine_record(&self.state.presence, machine)
    }

    async fn resolve_machine(&self, text: &str) -> Result<StoredMachine, Status> {
        resolve_machine(self.state.store.as_ref(), text).await
    }
}

/// A stored machine as operators see it: online while it has a live session here.
pub(crate) fn machine_record(presence: &Presence, machine: StoredMachine) -> MachineRecord {
    let labels = machine.effective_labels();
    let live_seen = presence.last_seen(&machine.id);
    let live = machine.revoked_at.is_none() && live_seen.is_some();
    let last_seen = live_seen.or(machine.last_seen);
    MachineRecord {
        labels,
        online: live,
        last_seen,
        id: machine.id,
        hostname: machine.hostname,
        enrolled_at: machine.enrolled_at,
        revoked_at: machine.revoked_at,
        operator_labels: machine.operator_labels,
        token_labels: machine.token_labels,
        inventory: machine.inventory,
        inventory_updated_at: machine.inventory_updated_at,
        agent_version: machine.agent_version,
        remote_address: machine.remote_address,
        join_token_id: machine.join_token_id,
        assignment: machine.assignment,
        report: machine.report,
    }
}

/// The one machine whose id is `text` or starts with it.
pub(crate) async fn resolve_machine(store: &dyn Store, text: &str) -> Result<StoredMachine, Status> {
    if text.is_empty() || text.len() > MachineId::MAX_LEN {
        return Err(Status::invalid_argument("give a machine id (or a unique prefix of one)"));
    }
    let mut matches = store.find_machines(text, 6).await.map_err(internal)?;
    if let Some(exact) = matches.iter().position(|machine| machine.id.as_str() == text) {
        return Ok(matches.swap_remove(exact));
    }
    match matches.len() {
        0 => {
            Err(Status::not_found(format!("no machine id starts with `{text}` (see `comfyfleet machines`)")))
        }
        1 => Ok(matches.remove(0)),
        _ => {
            let ids: Vec<_> = matches.iter().map(|machine| machine.id.as_str()).collect();
            Err(Status::invalid_argument(format!(
                "`{text}` matches several machines ({}); give more characters",
                ids.join(", ")
            )))
        }
    }
}

/// A listed machine's report without its steps' output: a page of 1,000 machines whose
/// builds failed loudly would otherwise not fit in one message. `GetMachine` has it all.
fn without_output_tails(mut record: MachineRecord) -> MachineRecord {
    if let Some(report) = &mut record.report {
        for step in &mut report.steps {
            step.output_tail.clear();
        }
    }
    record
}

pub(crate) use crate::grpc_status::internal;

fn join_token_to_wire(token: &JoinTokenRecord) -> pb::JoinToken {
    pb::JoinToken {
        id: token.id.clone(),
        created_at: Some(timestamp_to_wire(token.created_at)),
        expires_at: Some(timestamp_to_wire(token.expires_at)),
        uses_allowed: token.uses_allowed.unwrap_or(0),
        uses: token.uses,
        labels: labels_to_wire(&token.labels),
        description: token.description.clone(),
        created_by: token.created_by.clone(),
    }
}

fn check_source_credential_name(name: &str) -> Result<(), Status> {
    comfyfleet_config::source_credentials::check_credential_name(name).map_err(Status::invalid_argument)
}

/// Credential name → the environments (`name@revision`) whose latest revision names it.
async fn source_secret_users(state: &ControllerState) -> Result<BTreeMap<String, Vec<String>>, Status> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for environment in state.store.list_environments().await.map_err(internal)? {
        let Ok(spec) = serde_json::from_str::<comfyfleet_config::Spec>(&environment.latest.spec_json) else {
            continue;
        };
        for name in comfyfleet_config::source_credentials::credential_names(&spec) {
            users
                .entry(name)
                .or_default()
                .push(format!("{}@{}", environment.name, environment.latest.number));
        }
    }
    Ok(users)
}

fn credential_to_wire(credential: &CredentialRecord) -> pb::Credential {
    pb::Credential {
        id: credential.id.clone(),
        name: credential.name.clone(),
        role: pb::Role::from(credential.role).into(),
        created_at: Some(timestamp_to_wire(credential.created_at)),
        revoked_at: credential.revoked_at.map(timestamp_to_wire),
        created_by: credential.created_by.clone(),
    }
}

fn check_credential_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "a credential name is 1 to 64 letters, digits, `-`, `_`, `.` or `@` (e.g. ci-reader)",
        ))
    }
}

/// Mints a credential and stores its digest; returns the secret text, shown once.
/// Makes a credential, audited (`credential.create` by `created_by`, `note` after the
/// name and role) in the same transaction.
pub async fn mint_credential(
    state: &ControllerState,
    name: &str,
    role: Role,
    created_by: &str,
    note: &str,
) -> Result<(OperatorCredential, CredentialRecord), crate::store::StoreError> {
    let id = secrets::new_token_id();
    let secret = secrets::new_secret();
    let record = CredentialRecord {
        id: id.clone(),
        name: name.to_owned(),
        role,
        secret_sha256: secrets::digest(&secret),
        created_at: Timestamp::now(),
        revoked_at: None,
        created_by: created_by.to_owned(),
    };
    let entry = AuditEntry::new(created_by, "credential.create", &id, format!("{name} as {role}{note}"));
    audited(entry, state.store.create_credential(&record)).await?;
    let credential = OperatorCredential::new(&id, &secret)
        .map_err(|e| crate::store::StoreError::Corrupt { what: "new credential", detail: e.to_string() })?;
    Ok((credential, record))
}

#[tonic::async_trait]
impl pb::fleet_service_server::FleetService for FleetApi {
    type FillCacheStream = tokio_stream::wrappers::ReceiverStream<Result<pb::FillCacheProgress, Status>>;

    async fn lock_environment(
        &self,
        request: Request<pb::LockEnvironmentRequest>,
    ) -> Result<Response<pb::ApplyEnvironmentResponse>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        environment_service::lock(&self.state, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn get_cache_status(
        &self,
        request: Request<pb::CacheStatusRequest>,
    ) -> Result<Response<pb::CacheStatus>, Status> {
        self.caller(&request, Role::Viewer).await?;
        Ok(Response::new(cache_service::status_to_wire(self.state.packages.status().await)))
    }

    async fn prune_cache(
        &self,
        request: Request<pb::PruneCacheRequest>,
    ) -> Result<Response<pb::PruneCacheResponse>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        cache_service::prune(&self.state, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn fill_cache(
        &self,
        request: Request<pb::FillCacheRequest>,
    ) -> Result<Response<Self::FillCacheStream>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        let receiver = cache_service::fill(self.state.clone(), &caller, request.into_inner()).await?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(receiver)))
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.caller(&request, Role::Viewer).await?;
        Ok(Response::new(pb::WhoAmIResponse {
            credential_id: caller.credential_id,
            name: caller.name,
            role: pb::Role::from(caller.role).into(),
            controller_version: env!("CARGO_PKG_VERSION").to_owned(),
            server_certificate_not_after: Some(timestamp_to_wire(self.state.server_certificate.not_after())),
        }))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        let request = request.into_inner();
        let settings = &self.state.settings;
        let ttl = match request.ttl_seconds {
            0 => settings.default_token_ttl,
            seconds => Duration::from_secs(seconds),
        };
        if ttl > settings.max_token_ttl {
            return Err(Status::invalid_argument(format!(
                "a join token may live at most {} days",
                settings.max_token_ttl.as_secs() / 86_400
            )));
        }
        if let Some(c) = comfyfleet_config::text::deceptive(&request.description) {
            return Err(Status::invalid_argument(comfyfleet_config::text::refusal("the description", c)));
        }
        if request.description.len() > MAX_DESCRIPTION {
            return Err(Status::invalid_argument("the description must be at most 256 printable characters"));
        }
        let labels = labels_from_wire("labels", request.labels)?;
        let now = Timestamp::now();
        let ttl = SignedDuration::try_from(ttl).map_err(internal)?;
        let secret = secrets::new_secret();
        let record = JoinTokenRecord {
            id: secrets::new_token_id(),
            secret_sha256: secrets::digest(&secret),
            created_at: now,
            expires_at: now.checked_add(ttl).map_err(internal)?,
            uses_allowed: (request.uses > 0).then_some(request.uses),
            uses: 0,
            labels,
            description: request.description,
            created_by: caller.actor(),
        };
        let token = JoinToken::new(&record.id, &secret, &self.state.ca.sha256()).map_err(internal)?;
        let detail = format!(
            "expires {}, uses {}, labels {}",
            record.expires_at,
            record.uses_allowed.map_or("unlimited".to_owned(), |n| n.to_string()),
            record.labels
        );
        let entry = AuditEntry::new(caller.actor(), "token.create", &record.id, detail);
        audited(entry, self.state.store.create_join_token(&record)).await.map_err(internal)?;
        Ok(Response::new(pb::CreateJoinTokenResponse {
            token: token.to_string(),
            info: Some(join_token_to_wire(&record)),
        }))
    }

    async fn list_join_tokens(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        self.caller(&request, Role::Viewer).await?;
        let tokens = self.state.store.list_join_tokens().await.map_err(internal)?;
        Ok(Response::new(pb::ListJoinTokensResponse {
            tokens: tokens.iter().map(join_token_to_wire).collect(),
        }))
    }

    async fn delete_join_token(
        &self,
        request: Request<pb::DeleteJoinTokenRequest>,
    ) -> Result<Response<pb::DeleteJoinTokenResponse>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        let id = request.into_inner().id;
        let entry = AuditEntry::new(caller.actor(), "token.delete", &id, "");
        if !audited(entry, self.state.store.delete_join_token(&id)).await.map_err(internal)? {
            return Err(Status::not_found(format!("no join token {id} (see `comfyfleet token list`)")));
        }
        Ok(Response::new(pb::DeleteJoinTokenResponse {}))
    }

    async fn list_machines(
        &self,
        request: Request<pb::ListMachinesRequest>,
    ) -> Result<Response<pb::ListMachinesResponse>, Status> {
        self.caller(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let limit = match request.page_size {
            0 => DEFAULT_PAGE,
            size => size.min(MAX_PAGE),
        };
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse::<MachineId>()
                    .map_err(|_| Status::invalid_argument("page_token is not one we issued"))?,
            ),
        };
        let selector = crate::fleet_view::query(&request.selector).map_err(Status::invalid_argument)?;
        let (page, next) =
            crate::fleet_view::page(&self.state, selector.as_ref(), after, limit, request.include_revoked)
                .await
                .map_err(internal)?;
        let next_page_token = next.map(|id| id.to_string()).unwrap_or_default();
        let machines = page
            .into_iter()
            .map(|machine| pb::Machine::from(&without_output_tails(machine.record)))
            .collect();
        Ok(Response::new(pb::ListMachinesResponse {
            machines,
            next_page_token,
            server_certificate_not_after: Some(timestamp_to_wire(self.state.server_certificate.not_after())),
        }))
    }

    async fn get_machine(
        &self,
        request: Request<pb::GetMachineRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        self.caller(&request, Role::Viewer).await?;
        let machine = self.resolve_machine(&request.into_inner().id).await?;
        Ok(Response::new(pb::Machine::from(&self.machine_record(machine))))
    }

    async fn revoke_machine(
        &self,
        request: Request<pb::RevokeMachineRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        let caller = self.caller(&request, Role::Admin).await?;
        let machine = self.resolve_machine(&request.into_inner().id).await?;
        if machine.revoked_at.is_some() {
            return Err(Status::failed_precondition(format!("machine {} is already revoked", machine.id)));
        }
        let entry = AuditEntry::new(caller.actor(), "machine.revoke", machine.id.as_str(), &machine.hostname);
        audited(entry, self.state.store.revoke_machine(&machine.id, Timestamp::now()))
            .await
            .map_err(internal)?;
        let was_online = self.state.presence.kick(&machine.id, KickReason::Revoked);
        tracing::warn!(machine_id = %machine.id, was_online, by = %Escaped(caller.actor()), "machine revoked");
        let machine = self
            .state
            .store
            .get_machine(&machine.id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found("the machine disappeared while being revoked"))?;
        Ok(Response::new(pb::Machine::from(&self.machine_record(machine))))
    }

    async fn label_machine(
        &self,
        request: Request<pb::LabelMachineRequest>,
    ) -> Result<Response<pb::Machine>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        let request = request.into_inner();
        let mut machine = self.resolve_machine(&request.id).await?;
        let set = labels_from_wire("set", request.set)?;
        let mut labels = machine.operator_labels.clone();
        for key in &request.remove {
            validate_key(key).map_err(|e| Status::invalid_argument(e.to_string()))?;
            if labels.remove(key).is_none() {
                let source = if machine.agent_labels.get(key).is_some() {
                    "the agent's --label flags"
                } else if machine.token_labels.get(key).is_some() {
                    "its join token"
                } else {
                    return Err(Status::not_found(format!("machine {} has no label `{key}`", machine.id)));
                };
                return Err(Status::failed_precondition(format!(
                    "label `{key}` comes from {source}, not from an operator; override it with `{key}=VALUE` instead"
                )));
            }
        }
        for (key, value) in set.iter() {
            labels
                .insert(key.to_owned(), value.to_owned())
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let detail = format!("set {set}; removed {}", request.remove.join(","));
        let entry = AuditEntry::new(caller.actor(), "machine.label", machine.id.as_str(), detail);
        audited(entry, self.state.store.set_operator_labels(&machine.id, &labels)).await.map_err(internal)?;
        machine.operator_labels = labels;
        Ok(Response::new(pb::Machine::from(&self.machine_record(machine))))
    }

    async fn create_credential(
        &self,
        request: Request<pb::CreateCredentialRequest>,
    ) -> Result<Response<pb::CreateCredentialResponse>, Status> {
        let caller = self.caller(&request, Role::Admin).await?;
        let request = request.into_inner();
        check_credential_name(&request.name)?;
        let role = role_from_wire("role", request.role)?;
        let (credential, record) =
            mint_credential(&self.state, &request.name, role, &caller.actor(), "").await.map_err(internal)?;
        Ok(Response::new(pb::CreateCredentialResponse {
            token: credential.to_string(),
            info: Some(credential_to_wire(&record)),
        }))
    }

    async fn list_credentials(
        &self,
        request: Request<pb::ListCredentialsRequest>,
    ) -> Result<Response<pb::ListCredentialsResponse>, Status> {
        self.caller(&request, Role::Admin).await?;
        let credentials = self.state.store.list_credentials().await.map_err(internal)?;
        Ok(Response::new(pb::ListCredentialsResponse {
            credentials: credentials.iter().map(credential_to_wire).collect(),
        }))
    }

    async fn revoke_credential(
        &self,
        request: Request<pb::RevokeCredentialRequest>,
    ) -> Result<Response<pb::Credential>, Status> {
        let caller = self.caller(&request, Role::Admin).await?;
        let id = request.into_inner().id;
        let credentials = self.state.store.list_credentials().await.map_err(internal)?;
        let target = credentials.iter().find(|credential| credential.id == id).ok_or_else(|| {
            Status::not_found(format!("no credential {id} (see `comfyfleet credentials list`)"))
        })?;
        let live_admins = credentials
            .iter()
            .filter(|c| c.role == Role::Admin && c.revoked_at.is_none() && c.id != id)
            .count();
        if target.role == Role::Admin && target.revoked_at.is_none() && live_admins == 0 {
            return Err(Status::failed_precondition(
                "this is the last admin credential; create another admin first so nobody is locked out",
            ));
        }
        let entry = AuditEntry::new(caller.actor(), "credential.revoke", &id, &target.name);
        audited(entry, self.state.store.revoke_credential(&id, Timestamp::now())).await.map_err(internal)?;
        let revoked = self.state.store.get_credential(&id).await.map_err(internal)?;
        let revoked =
            revoked.ok_or_else(|| Status::not_found("the credential disappeared while being revoked"))?;
        Ok(Response::new(credential_to_wire(&revoked)))
    }

    async fn set_source_secret(
        &self,
        request: Request<pb::SetSourceSecretRequest>,
    ) -> Result<Response<pb::SourceSecretInfo>, Status> {
        let caller = self.caller(&request, Role::Admin).await?;
        let request = request.into_inner();
        check_source_credential_name(&request.name)?;
        let mut origins = Vec::new();
        for given in &request.origins {
            let origin = comfyfleet_config::source_credentials::parse_origin(given).map_err(|message| {
                Status::invalid_argument(format!("credential {:?}: {message}", request.name))
            })?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        let secret = SourceSecret {
            username: request.username,
            password: request.secret,
            origins,
            bearer: request.bearer,
        };
        secret.check().map_err(|message| {
            Status::invalid_argument(format!("credential {:?}: {message}", request.name))
        })?;
        let who =
            if secret.bearer { "bearer token".to_owned() } else { format!("username {}", secret.username) };
        let detail = format!("{who}; origins {}; {{created}}", secret.origins.join(", "));
        let entry = AuditEntry::new(caller.actor(), "secret.set", &request.name, detail);
        let replaced =
            audited(entry, self.state.source_secrets.set(&request.name, &secret)).await.map_err(internal)?;
        let used_by = source_secret_users(&self.state).await?.remove(&request.name).unwrap_or_default();
        Ok(Response::new(pb::SourceSecretInfo {
            name: request.name,
            username: secret.username,
            set_at: Some(timestamp_to_wire(Timestamp::now())),
            used_by,
            replaced,
            origins: secret.origins,
            bearer: secret.bearer,
        }))
    }

    async fn list_source_secrets(
        &self,
        request: Request<pb::ListSourceSecretsRequest>,
    ) -> Result<Response<pb::ListSourceSecretsResponse>, Status> {
        self.caller(&request, Role::Admin).await?;
        let mut users = source_secret_users(&self.state).await?;
        let listed = self.state.source_secrets.list().await.map_err(internal)?;
        Ok(Response::new(pb::ListSourceSecretsResponse {
            secrets: listed
                .into_iter()
                .map(|info| pb::SourceSecretInfo {
                    used_by: users.remove(&info.name).unwrap_or_default(),
                    name: info.name,
                    username: info.username,
                    set_at: Some(timestamp_to_wire(info.set_at)),
                    replaced: false,
                    origins: info.origins,
                    bearer: info.bearer,
                })
                .collect(),
        }))
    }

    async fn delete_source_secret(
        &self,
        request: Request<pb::DeleteSourceSecretRequest>,
    ) -> Result<Response<pb::DeleteSourceSecretResponse>, Status> {
        let caller = self.caller(&request, Role::Admin).await?;
        let request = request.into_inner();
        check_source_credential_name(&request.name)?;
        let users = source_secret_users(&self.state).await?.remove(&request.name).unwrap_or_default();
        if !users.is_empty() && !request.force {
            return Err(Status::failed_precondition(format!(
                "credential {:?} is named by {}: apply specs that no longer name it first, or delete it anyway with \
                 --force (their builds then fail where they need it)",
                request.name,
                users.join(", ")
            )));
        }
        let entry = AuditEntry::new(caller.actor(), "secret.delete", &request.name, "");
        if !audited(entry, self.state.source_secrets.delete(&request.name)).await.map_err(internal)? {
            return Err(Status::not_found(format!(
                "no credential {:?} (see `comfyfleet secrets list`)",
                request.name
            )));
        }
        Ok(Response::new(pb::DeleteSourceSecretResponse {}))
    }

    async fn get_fleet_report(
        &self,
        request: Request<pb::FleetReportRequest>,
    ) -> Result<Response<pb::FleetReport>, Status> {
        self.caller(&request, Role::Viewer).await?;
        let request = request.into_inner();
        let kind: ReportKind = request.report.parse().map_err(Status::invalid_argument)?;
        let selector = crate::fleet_view::query(&request.selector).map_err(Status::invalid_argument)?;
        let report =
            crate::fleet_view::report(&self.state, kind, selector.as_ref()).await.map_err(internal)?;
        let report_json = serde_json::to_string(&report).map_err(internal)?;
        Ok(Response::new(pb::FleetReport { report_json }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.caller(&request, Role::Viewer).await?;
        let limit = match request.into_inner().limit {
            0 => 100,
            n => n.min(10_000),
        };
        let events = self.state.store.list_audit(limit).await.map_err(internal)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events
                .into_iter()
                .map(|event| pb::AuditEvent {
                    id: event.id,
                    at: Some(timestamp_to_wire(event.at)),
                    actor: event.actor,
                    action: event.action,
                    target: event.target,
                    detail: event.detail,
                })
                .collect(),
        }))
    }

    async fn apply_environment(
        &self,
        request: Request<pb::ApplyEnvironmentRequest>,
    ) -> Result<Response<pb::ApplyEnvironmentResponse>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        environment_service::apply(&self.state, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        self.caller(&request, Role::Viewer).await?;
        environment_service::list(&self.state).await.map(Response::new)
    }

    async fn list_environment_revisions(
        &self,
        request: Request<pb::ListEnvironmentRevisionsRequest>,
    ) -> Result<Response<pb::ListEnvironmentRevisionsResponse>, Status> {
        self.caller(&request, Role::Viewer).await?;
        environment_service::history(&self.state, request.into_inner()).await.map(Response::new)
    }

    async fn get_environment_revision(
        &self,
        request: Request<pb::GetEnvironmentRevisionRequest>,
    ) -> Result<Response<pb::EnvironmentRevision>, Status> {
        self.caller(&request, Role::Viewer).await?;
        environment_service::get(&self.state, request.into_inner()).await.map(Response::new)
    }

    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::StartRolloutResponse>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        rollouts::api::start(&self.state, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn rollback_machine(
        &self,
        request: Request<pb::RollbackMachineRequest>,
    ) -> Result<Response<pb::RollbackMachineResponse>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        rollout_service::rollback(&self.state, &caller, request.into_inner()).await.map(Response::new)
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        self.caller(&request, Role::Viewer).await?;
        rollouts::api::get(&self.state, request.into_inner()).await.map(Response::new)
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        self.caller(&request, Role::Viewer).await?;
        rollouts::api::list(&self.state, request.into_inner()).await.map(Response::new)
    }

    async fn list_rollout_events(
        &self,
        request: Request<pb::ListRolloutEventsRequest>,
    ) -> Result<Response<pb::ListRolloutEventsResponse>, Status> {
        self.caller(&request, Role::Viewer).await?;
        rollouts::api::events(&self.state, request.into_inner()).await.map(Response::new)
    }

    async fn pause_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        rollouts::api::act(&self.state, &caller, rollouts::Command::Pause, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn resume_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        rollouts::api::act(&self.state, &caller, rollouts::Command::Resume, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn abort_rollout(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        rollouts::api::act(&self.state, &caller, rollouts::Command::Abort, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn undo_rollout(
        &self,
        request: Request<pb::UndoRolloutRequest>,
    ) -> Result<Response<pb::StartRolloutResponse>, Status> {
        let caller = self.caller(&request, Role::Operator).await?;
        rollouts::api::undo(&self.state, &caller, request.into_inner()).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use comfyfleet_config::Labels;
    use pb::fleet_service_server::FleetService;

    use super::*;

    #[tokio::test]
    async fn listed_reports_leave_out_step_output_which_get_machine_keeps() {
        use comfyfleet_config::convergence::{Phase, StepReport, StepState};
        use comfyfleet_config::{ConvergenceReport, MachineId};

        use crate::test_fleet::TestFleet;

        let fleet = TestFleet::new().await;
        let machine: MachineId = fleet.add_machine("aa01", "h100-x8-580", &[]).await;
        let mut report = ConvergenceReport::idle(Timestamp::now());
        report.phase = Phase::Failed;
        report.steps.push(StepReport {
            state: StepState::Failed,
            output_tail: "error: no matching distribution".into(),
            ..StepReport::pending("torch")
        });
        fleet.state.store.record_report(&machine, &report, Timestamp::now()).await.unwrap();
        let full = fleet.get_machine(&machine).await.report.unwrap();
        assert_eq!(full.steps[0].output_tail, "error: no matching distribution");
        let message = pb::ListMachinesRequest::default();
        let listed = fleet.api.list_machines(TestFleet::request(&fleet.viewer, message)).await.unwrap();
        let listed = listed.into_inner().machines.remove(0).report.unwrap();
        assert_eq!(
            (listed.phase(), listed.steps[0].output_tail.as_str()),
            (pb::ConvergencePhase::Failed, "")
        );
    }

    #[tokio::test]
    async fn a_selector_filters_listed_machines_page_by_page_and_reports_come_from_the_same_machines() {
        use crate::test_fleet::TestFleet;

        let fleet = TestFleet::new().await;
        // 12 machines, ids in order: every third a 4× A100 in pool b, the rest 4090s.
        for n in 0..12 {
            let profile = if n % 3 == 0 { "a100-x4-570" } else { "rtx4090-x1-570" };
            let pool = if n % 3 == 0 { "pool=b" } else { "pool=a" };
            fleet.add_machine(&format!("m{n:02}"), profile, &[pool]).await;
        }
        let list = |selector: &str, page_token: String| pb::ListMachinesRequest {
            page_size: 3,
            page_token,
            include_revoked: false,
            selector: selector.to_owned(),
        };
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let request =
                TestFleet::request(&fleet.viewer, list("gpu.name contains A100 && pool == b", token));
            let page = fleet.api.list_machines(request).await.unwrap().into_inner();
            assert!(page.machines.len() <= 3);
            seen.extend(page.machines.into_iter().map(|machine| machine.id));
            pages += 1;
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(seen, ["m00", "m03", "m06", "m09"], "after {pages} pages");
        // A mistake says where it is and what to write.
        let request = TestFleet::request(&fleet.viewer, list("phase == actve", String::new()));
        let refused = fleet.api.list_machines(request).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("at character 10: `phase` cannot be compared"),
            "{}",
            refused.message()
        );
        // The same selector narrows a report.
        let request = pb::FleetReportRequest { report: "gpus".into(), selector: "pool == b".into() };
        let report = fleet.api.get_fleet_report(TestFleet::request(&fleet.viewer, request)).await.unwrap();
        let report: serde_json::Value = serde_json::from_str(&report.into_inner().report_json).unwrap();
        assert_eq!((report["report"].as_str(), report["machines"].as_u64()), (Some("gpus"), Some(4)));
        assert_eq!(report["rows"][0]["gpus"], 16);
        let request = pb::FleetReportRequest { report: "cpus".into(), selector: String::new() };
        let refused =
            fleet.api.get_fleet_report(TestFleet::request(&fleet.viewer, request)).await.unwrap_err();
        assert!(refused.message().contains("choose gpus, environments, optimizations or drift"));
    }

    #[test]
    fn credential_names_are_checked() {
        assert!(check_credential_name("ci-reader").is_ok());
        assert!(check_credential_name("").is_err());
        assert!(check_credential_name("a b").is_err());
    }

    #[test]
    fn labels_round_trip_for_tokens() {
        let record = JoinTokenRecord {
            id: "0123456789ab".into(),
            secret_sha256: [0; 32],
            created_at: Timestamp::UNIX_EPOCH,
            expires_at: Timestamp::UNIX_EPOCH,
            uses_allowed: None,
            uses: 0,
            labels: Labels::parse_pairs(["pool=a"]).unwrap(),
            description: String::new(),
            created_by: String::new(),
        };
        let wire = join_token_to_wire(&record);
        assert_eq!(wire.uses_allowed, 0);
        assert_eq!(wire.labels.get("pool").map(String::as_str), Some("a"));
    }
}
