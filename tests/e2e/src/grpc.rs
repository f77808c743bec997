//! Talking to the controller the way a hostile or buggy peer would: no client
//! certificate, someone else's certificate, hand-made messages, raw bytes.

use std::path::Path;

use bytes::{Buf, BufMut};
use comfyfleet_proto::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Status, Streaming};

/// An agent's identity files, as enrollment left them.
pub struct AgentFiles {
    pub machine_id: String,
    pub ca_pem: String,
    pub certificate_pem: String,
    pub key_pem: String,
}

impl AgentFiles {
    pub fn read(agent_data_dir: &Path) -> AgentFiles {
        let dir = agent_data_dir.join("identity");
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        let machine: toml::Value = toml::from_str(&read("machine.toml")).unwrap();
        AgentFiles {
            machine_id: machine["machine_id"].as_str().unwrap().to_owned(),
            ca_pem: read("ca.crt"),
            certificate_pem: read("machine.crt"),
            key_pem: read("machine.key"),
        }
    }
}

/// A channel trusting `ca_pem`, presenting `client` if given.
pub async fn channel(url: &str, ca_pem: &str, client: Option<&AgentFiles>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(files) = client {
        tls = tls.identity(Identity::from_pem(&files.certificate_pem, &files.key_pem));
    }
    Endpoint::from_shared(url.to_owned()).unwrap().tls_config(tls).unwrap().connect().await.unwrap()
}

/// The CA certificate from a controller's data dir.
pub fn controller_ca(controller_data_dir: &Path) -> String {
    std::fs::read_to_string(controller_data_dir.join("pki/ca.crt")).unwrap()
}

/// An open session stream: send what you like, read what comes back.
pub struct RawSession {
    outbound: mpsc::Sender<Vec<u8>>,
    pub inbound: Streaming<pb::ControllerMessage>,
}

impl RawSession {
    pub async fn open(channel: Channel) -> Result<RawSession, Status> {
        let (outbound, receiver) = mpsc::channel(8);
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let path = "/comfyfleet.v1.AgentService/Session".parse().unwrap();
        let response =
            grpc.streaming(tonic::Request::new(ReceiverStream::new(receiver)), path, RawCodec).await?;
        Ok(RawSession { outbound, inbound: response.into_inner() })
    }

    pub async fn send_bytes(&self, bytes: Vec<u8>) {
        // The server may already have ended the stream; the answer says why.
        let _ = self.outbound.send(bytes).await;
    }

    pub async fn send(&self, message: pb::AgentMessage) {
        self.send_bytes(message.encode_to_vec()).await;
    }

    /// Sends a heartbeat every `every` until the stream ends (what keeps a raw session
    /// open past the controller's silence limit while a test waits on other things).
    pub fn keep_alive(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let outbound = self.outbound.clone();
        let heartbeat =
            pb::AgentMessage { seq: 0, body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {})) };
        tokio::spawn(async move {
            while outbound.send(heartbeat.encode_to_vec()).await.is_ok() {
                tokio::time::sleep(every).await;
            }
        })
    }

    /// The next message, or the status the stream ended with.
    pub async fn next(&mut self) -> Result<Option<pb::ControllerMessage>, Status> {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("test timed out waiting for the controller"))?
    }
}

pub fn hello(machine_id: &str, inventory: Option<pb::Inventory>) -> pb::AgentMessage {
    pb::AgentMessage {
        seq: 1,
        body: Some(pb::agent_message::Body::Hello(pb::Hello {
            machine_id: machine_id.to_owned(),
            agent_version: "test".to_owned(),
            labels: Default::default(),
            inventory,
        })),
    }
}

/// A plausible inventory with `gpus` identical GPUs.
pub fn inventory(hostname: &str, gpus: u32) -> pb::Inventory {
    pb::Inventory {
        host: Some(pb::Host { hostname: hostname.to_owned(), cpu_cores: 4, ..Default::default() }),
        nvidia: Some(pb::Nvidia {
            status: pb::NvmlStatus::Ok.into(),
            status_detail: String::new(),
            driver_version: Some("570.133.07".into()),
            cuda_driver_version: Some(12080),
            gpus: (0..gpus)
                .map(|index| pb::Gpu {
                    index,
                    name: Some("NVIDIA L40S".into()),
                    uuid: Some(format!("GPU-{index}")),
                    memory_total_bytes: Some(48_305_799_168),
                    compute_capability: Some(pb::ComputeCapability { major: 8, minor: 9 }),
                    pci_bus_id: None,
                    errors: vec![],
                })
                .collect(),
        }),
        environments: None,
    }
}

/// Sends bytes as they are; decodes the controller's messages normally.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct ControllerDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::ControllerMessage;
    type Encoder = RawEncoder;
    type Decoder = ControllerDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ControllerDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ControllerDecoder {
    type Item = pb::ControllerMessage;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<pb::ControllerMessage>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        pb::ControllerMessage::decode(bytes).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}
