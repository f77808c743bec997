//! `comfyfleet secrets …`: the credentials a spec's sources need (a private index, a
//! private git host), stored on the controller and named in specs
//! (`index.credential = "NAME"`). The secret is read from stdin or a file, never from
//! an argument (which `ps` shows to every local user), and never shown back.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use comfyfleet_proto::v1 as pb;
use serde::Serialize;

use super::{status_error, time, to_json};
use crate::OutputFormat;
use crate::client::Fleet;
use crate::format;

/// The secret: the first line of `from_file`, or of stdin (prompted for on a terminal).
pub fn read_secret(name: &str, from_file: Option<&Path>) -> anyhow::Result<String> {
    let text = match from_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read the secret from {}: {error}", path.display()))?,
        None => {
            let stdin = std::io::stdin();
            let terminal = stdin.is_terminal();
            if terminal {
                eprint!("secret for {name}: ");
                let _ = std::io::stderr().flush();
                // Typed, not shown, as passwd and ssh-keygen read one.
                stty("-echo");
            }
            let mut line = String::new();
            let read = stdin.lock().read_line(&mut line);
            if terminal {
                stty("echo");
                eprintln!();
            }
            read?;
            line
        }
    };
    let secret = text.lines().next().unwrap_or_default().trim_end_matches('\r').to_owned();
    if secret.is_empty() {
        anyhow::bail!(
            "no secret given: pipe it on stdin (`comfyfleet secrets set {name} --username USER --origin \
             https://HOST < token-file`) or use --from-file PATH"
        );
    }
    Ok(secret)
}

/// `stty SETTING` on the terminal stdin is; without stty the secret is echoed.
fn stty(setting: &str) {
    let _ = std::process::Command::new("stty")
        .arg(setting)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .status();
}

pub async fn set(
    client: &mut Fleet,
    name: String,
    username: String,
    bearer: bool,
    origins: Vec<String>,
    secret: String,
) -> anyhow::Result<String> {
    let info = client
        .set_source_secret(pb::SetSourceSecretRequest { name, username, secret, origins, bearer })
        .await
        .map_err(status_error)?
        .into_inner();
    let verb = if info.replaced { "replaced" } else { "stored" };
    let mut text = format!(
        "credential {} ({}) {verb}, sent only to {}\n",
        info.name,
        kind(info.bearer, &info.username),
        info.origins.join(", ")
    );
    if info.used_by.is_empty() {
        text.push_str(&format!(
            "no environment names it yet: write credential = \"{}\" beside the URL in a spec (e.g. index.credential)\n",
            info.name
        ));
    } else {
        text.push_str(&format!(
            "named by {}; builds that need it get it from now on\n",
            info.used_by.join(", ")
        ));
    }
    Ok(text)
}

/// `bearer token`, or the username a basic credential goes with.
fn kind(bearer: bool, username: &str) -> String {
    if bearer { "bearer token".to_owned() } else { username.to_owned() }
}

#[derive(Serialize)]
struct SecretView {
    name: String,
    username: String,
    /// `bearer` or `basic`.
    kind: &'static str,
    /// Where it may be sent; empty: nowhere (stored before secrets were bound).
    origins: Vec<String>,
    set_at: Option<String>,
    used_by: Vec<String>,
}

pub async fn list(client: &mut Fleet, output: OutputFormat) -> anyhow::Result<String> {
    let secrets = client
        .list_source_secrets(pb::ListSourceSecretsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .secrets;
    let views: Vec<SecretView> = secrets
        .into_iter()
        .map(|info| SecretView {
            set_at: time(info.set_at.as_ref()).map(format::rfc3339),
            name: info.name,
            kind: if info.bearer { "bearer" } else { "basic" },
            username: info.username,
            origins: info.origins,
            used_by: info.used_by,
        })
        .collect();
    match output {
        OutputFormat::Json => to_json(&views),
        OutputFormat::Table | OutputFormat::Csv => {
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|view| {
                    vec![
                        view.name.clone(),
                        kind(view.kind == "bearer", &view.username),
                        if view.origins.is_empty() {
                            // Stored before secrets were bound: sent nowhere.
                            "none: set it again with --origin".to_owned()
                        } else {
                            view.origins.join(",")
                        },
                        view.set_at.clone().unwrap_or_default(),
                        if view.used_by.is_empty() { "-".to_owned() } else { view.used_by.join(",") },
                    ]
                })
                .collect();
            Ok(format::table(&["NAME", "USERNAME", "ORIGINS", "SET", "USED BY"], &rows))
        }
    }
}

pub async fn delete(client: &mut Fleet, name: String, force: bool) -> anyhow::Result<String> {
    client
        .delete_source_secret(pb::DeleteSourceSecretRequest { name: name.clone(), force })
        .await
        .map_err(status_error)?;
    Ok(format!("credential {name} deleted\n"))
}
