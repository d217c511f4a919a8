//! Audits the calls tonic rejects before a handler runs: a unary message
//! that is too large (`OUT_OF_RANGE`) or not valid protobuf (`INTERNAL`
//! "failed to decode"), and unknown methods (`UNIMPLEMENTED`). Without this
//! layer those calls would leave no audit event (SPEC §1.7).
//!
//! It inspects only the response head: tonic answers such calls with a
//! trailers-only response whose `grpc-status` is in the headers. Refusals
//! produced by Hutch's own handlers carry other messages and are audited
//! where they are made, so nothing is recorded twice.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::codegen::http;
use tonic::{Code, Status};

use super::{Instance, Refusal};

/// The layer; see the module doc.
#[derive(Clone)]
pub(crate) struct RejectAuditLayer(pub Arc<Instance>);

impl<S> tower::Layer<S> for RejectAuditLayer {
    type Service = RejectAudit<S>;

    fn layer(&self, inner: S) -> RejectAudit<S> {
        RejectAudit {
            inner,
            inst: self.0.clone(),
        }
    }
}

/// The service of [`RejectAuditLayer`].
#[derive(Clone)]
pub(crate) struct RejectAudit<S> {
    inner: S,
    inst: Arc<Instance>,
}

/// Why tonic rejected a call, if the response says it did.
fn tonic_rejection(headers: &http::HeaderMap) -> Option<(Code, String)> {
    let status = Status::from_header_map(headers)?;
    let msg = status.message();
    let reason = match status.code() {
        Code::OutOfRange if msg.starts_with("Error, decoded message length too large") => {
            format!("message too large: {msg}")
        }
        Code::Internal if msg.starts_with("failed to decode") => {
            format!("malformed protobuf: {msg}")
        }
        Code::Unimplemented if msg.is_empty() => "unknown method".to_owned(),
        _ => return None,
    };
    Some((status.code(), reason))
}

impl<S, B, RB> tower::Service<http::Request<B>> for RejectAudit<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = super::clip(req.uri().path(), 256);
        let fut = self.inner.call(req);
        let inst = self.inst.clone();
        Box::pin(async move {
            let res = fut.await?;
            if let Some((code, reason)) = tonic_rejection(res.headers()) {
                let resource = format!("method{path}");
                inst.refuse(Refusal::new(code, "api.call.rejected", &resource, reason));
            }
            Ok(res)
        })
    }
}
