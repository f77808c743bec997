//! The server certificate renews under a running controller: clients connected before
//! carry on, new ones get the new certificate (gRPC and the web page alike), `/metrics`
//! and `whoami` show its expiry, and every certificate is back-dated for agents whose
//! clock runs behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers fail loudly by design

use std::sync::Arc;
use std::time::Duration;

use comfyfleet_e2e::observe::http_get;
use comfyfleet_e2e::provision::free_ports;
use comfyfleet_e2e::{Agent, Controller, profile, test_dir, wait_until};
use rustls::pki_types::{CertificateDer, ServerName};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The certificate a TLS listener serves, as a client that trusts the fleet's CA sees it.
#[derive(Debug, Clone, PartialEq)]
struct Served {
    der: Vec<u8>,
    serial: String,
    not_before: i64,
    not_after: i64,
}

async fn served_certificate(port: u16, ca_pem: &str) -> Served {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pem_der(ca_pem))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // A full handshake that checks the chain against the CA and the validity dates.
    let tls = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (_, parsed) = X509Certificate::from_der(&der).unwrap();
    Served {
        serial: hex::encode(parsed.raw_serial()),
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
        der: der.clone(),
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine;
    let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn expiry_metric(port: u16) -> Option<i64> {
    let answer = http_get(port, "/metrics", &[])?;
    answer
        .body
        .lines()
        .find(|line| line.starts_with("comfyfleet_server_certificate_expiry_timestamp_seconds "))
        .and_then(|line| line.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_renews_without_a_restart() {
    let dir = test_dir();
    let ports = free_ports(2);
    let (metrics_port, web_port) = (ports[0], ports[1]);
    let controller = Controller::start_with(
        &dir.path().join("controller"),
        0,
        &[
            "--server-cert-validity",
            "24s",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--web-listen",
            &format!("127.0.0.1:{web_port}"),
        ],
    );
    let ca_pem = std::fs::read_to_string(dir.path().join("controller/pki/ca.crt")).unwrap();
    let first = served_certificate(controller.port, &ca_pem).await;

    // Back-dated: an agent whose clock is two hours slow accepts it.
    assert!(now() - first.not_before >= 2 * 3600, "valid only from {} s ago", now() - first.not_before);
    assert!(first.not_after - now() <= 24, "valid for {} s", first.not_after - now());
    assert_eq!(
        served_certificate(web_port, &ca_pem).await,
        first,
        "the web page serves the same certificate"
    );
    assert_eq!(expiry_metric(metrics_port), Some(first.not_after));
    let whoami = controller.cli(&["whoami"]);
    assert!(whoami.status.success(), "{}", whoami.stderr);
    assert!(whoami.stderr.contains("server certificate expires at"), "no warning: {}", whoami.stderr);

    // Clients connected before the renewal: an agent's session and an operator's channel.
    let token = controller.create_token(&[]);
    let before =
        Agent::start(dir.path(), "before", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    let channel = comfyfleet_e2e::grpc::channel(&controller.url, &ca_pem, None).await;
    let mut health = HealthClient::new(channel);
    health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    wait_until(Duration::from_secs(20), "the first agent online", || {
        controller.machine("before").filter(|machine| machine["online"] == true)
    });

    // Renewed at two-thirds of its life, while the controller runs on.
    let renewed = {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let served = served_certificate(controller.port, &ca_pem).await;
            if served.der != first.der {
                break served;
            }
            assert!(std::time::Instant::now() < deadline, "the certificate was not renewed within 60 s");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    assert_ne!(renewed.serial, first.serial);
    assert!(renewed.not_after > first.not_after, "{renewed:?} after {first:?}");
    let pid = controller.process.pid();

    // Past the first certificate's end: everyone still works, old and new.
    let past = u64::try_from(first.not_after - now() + 2).unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(past)).await;
    health.check(HealthCheckRequest { service: String::new() }).await.unwrap();
    let token = controller.create_token(&[]);
    let _after = Agent::start(dir.path(), "after", &profile("t4-x1-535"), &controller.url, Some(&token), &[]);
    wait_until(Duration::from_secs(30), "both agents online", || {
        let machines = controller.machines();
        (machines.len() == 2 && machines.iter().all(|machine| machine["online"] == true)).then_some(())
    });
    assert_eq!(controller.process.pid(), pid, "no restart");
    assert!(
        before.process.log().matches("connected to the controller").count() <= 1,
        "{}",
        before.process.log()
    );
    let now_served = served_certificate(controller.port, &ca_pem).await;
    assert!(now_served.not_after > first.not_after);
    assert_eq!(
        served_certificate(web_port, &ca_pem).await.not_after,
        now_served.not_after,
        "the web page's renewed too"
    );
    wait_until(Duration::from_secs(20), "/metrics to show the renewed expiry", || {
        let shown = expiry_metric(metrics_port)?;
        (shown > first.not_after && shown >= now_served.not_after).then_some(())
    });
}
