//! The `hutch.plugin.v1.Agent` service of one instance: hello/welcome with
//! protocol version check, then tasks out and events in through the
//! instance's [`super::TaskHub`].
//!
//! The session is long-lived by design, so the stream-duration limit does
//! not apply to it; opening it is rate-limited like any call, and events
//! are back-pressured (a plugin that floods events only slows itself).

use std::sync::Arc;

use hutch_plugin_protocol::client::PROTOCOL_VERSION;
use hutch_plugin_protocol::plugin::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{Instance, Refusal};
use crate::audit::AuditEvent;

pub(crate) struct AgentSvc(pub Arc<Instance>);

const OP_OPEN: &str = "agent.session.open";
const OP_CLOSE: &str = "agent.session.close";

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentSvc {
    type SessionStream = ReceiverStream<Result<pb::DaemonMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::PluginMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let inst = self.0.clone();
        let resource = format!("instance/{}", inst.spec.instance_id);
        let refuse = |code: Code, reason: String| {
            inst.refuse(Refusal::new(code, OP_OPEN, &resource, reason))
        };
        let peer = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred)
            .map(|c| c.uid());
        if peer != Some(inst.spec.uid) {
            return Err(refuse(
                Code::PermissionDenied,
                "peer uid does not match the instance uid".into(),
            ));
        }
        // Opening a session counts against the rate limit; the permit is not
        // held for the session's lifetime.
        inst.limiter
            .admit()
            .map_err(|e| refuse(Code::ResourceExhausted, e.to_string()))?;
        let mut stream = request.into_inner();
        let idle = inst.limiter.limits().stream_idle_timeout;
        let hello = match tokio::time::timeout(idle, stream.message()).await {
            Ok(Ok(Some(pb::PluginMessage {
                msg: Some(pb::plugin_message::Msg::Hello(h)),
            }))) => h,
            Ok(Err(s)) => return Err(s),
            Err(_) => {
                return Err(refuse(
                    Code::ResourceExhausted,
                    format!("no hello within {idle:?}"),
                ));
            }
            Ok(Ok(_)) => {
                return Err(refuse(
                    Code::InvalidArgument,
                    "the first agent message must be a hello".into(),
                ));
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION as i32 {
            return Err(refuse(
                Code::FailedPrecondition,
                format!(
                    "protocol version mismatch: plugin speaks {}, hutch speaks {}",
                    hello.protocol_version, PROTOCOL_VERSION as i32
                ),
            ));
        }
        let (tx, rx) = mpsc::channel(64);
        let Some(session) = inst.hub.attach(tx.clone()) else {
            return Err(refuse(
                Code::AlreadyExists,
                "an agent session is already open for this instance".into(),
            ));
        };
        let welcome = pb::DaemonMessage {
            msg: Some(pb::daemon_message::Msg::Welcome(pb::Welcome {
                protocol_version: PROTOCOL_VERSION as i32,
                plugin_id: inst.spec.plugin_id.clone(),
                plugin_version: inst.spec.version.clone(),
                instance_id: inst.spec.instance_id.clone(),
                granted_scopes: inst.spec.granted_scopes.names(),
            })),
        };
        let _ = tx.send(Ok(welcome)).await;
        let actions: Vec<String> = hello
            .actions
            .iter()
            .take(64)
            .map(|a| super::clip(a, 128))
            .collect();
        inst.sink.record(
            AuditEvent::new(inst.actor(None), OP_OPEN, resource.clone()).with_details(
                serde_json::json!({ "actions": actions, "client": super::clip(&hello.client, 128) }),
            ),
        );
        tokio::spawn(async move {
            let end = loop {
                match stream.message().await {
                    Ok(Some(pb::PluginMessage { msg: Some(m) })) => {
                        inst.hub.on_plugin_message(m).await;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break "closed by the plugin".to_owned(),
                    Err(s) => break format!("stream error: {}", s.message()),
                }
            };
            inst.hub.detach(session);
            inst.sink.record(
                AuditEvent::new(inst.actor(None), OP_CLOSE, resource)
                    .with_details(serde_json::json!({ "end": end })),
            );
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
