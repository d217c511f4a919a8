//! The `hutch.plugin.v1.Data` service of one instance: gate, then backend.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use hutch_plugin_protocol::client::MAX_CHUNK_SIZE;
use hutch_plugin_protocol::plugin::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{Call, Instance, Refusal};
use crate::audit::{AuditEvent, Outcome};
use crate::authz::{Operation, Owner};
use crate::limits::LimitExceeded;
use crate::store::{
    ByteStream, DatasetId, DatasetInfo, Expect, ListObjects, NewDataset, ObjectInfo, ObjectKey,
    StoreError, Version,
};

pub(crate) struct DataSvc(pub Arc<Instance>);

fn ds_resource(ds: &str) -> String {
    format!("dataset/{ds}")
}

fn obj_resource(ds: &str, key: &str) -> String {
    format!("dataset/{ds}/object/{key}")
}

/// Maps a backend error to the status the plugin sees. Internal details
/// (paths, SQL) stay in the daemon log.
fn status_of(e: &StoreError) -> Status {
    match e {
        StoreError::InvalidName { .. } | StoreError::Input(_) => {
            Status::invalid_argument(e.to_string())
        }
        StoreError::DatasetNotFound(_)
        | StoreError::ObjectNotFound { .. }
        | StoreError::Purged { .. } => Status::not_found(e.to_string()),
        StoreError::DatasetExists(_) => Status::already_exists(e.to_string()),
        // The host path stays in the audit event and the daemon log.
        StoreError::DiskReserve { .. } => {
            tracing::warn!(error = %e, "write refused: free-space reserve");
            Status::resource_exhausted(
                "storage is full: the store keeps a free-space reserve and this write would use it; nothing was changed",
            )
        }
        StoreError::Conflict { .. } => Status::failed_precondition(e.to_string()),
        StoreError::Audit(_) => Status::unavailable("audit store unavailable: nothing was changed"),
        StoreError::NotSupported(_) => Status::unimplemented(e.to_string()),
        StoreError::Io { .. } | StoreError::Db { .. } | StoreError::Corrupt(_) => {
            tracing::error!(error = %e, "store error");
            Status::internal("internal store error (see the daemon log)")
        }
    }
}

fn expect_of(v: Option<u64>) -> Result<Expect, Status> {
    Expect::from_expected_version(v)
        .ok_or_else(|| Status::invalid_argument("expected_version out of range"))
}

fn pb_info(i: &ObjectInfo) -> pb::ObjectInfo {
    pb::ObjectInfo {
        dataset_id: i.dataset.to_string(),
        key: i.key.to_string(),
        version: u64::try_from(i.version.0).unwrap_or(0),
        size: i.size,
        sha256: i.sha256.clone().unwrap_or_default(),
        metadata: i.metadata.clone().into_iter().collect(),
        modified_unix_ms: i.created_us / 1000,
        deleted: i.deleted,
    }
}

impl DataSvc {
    fn pb_dataset(&self, d: &DatasetInfo) -> pb::Dataset {
        let snap = self.0.authz.snapshot();
        let (owner_user, owner_team) = match snap.owner(d.id.as_str()) {
            Some(Owner::User(u)) => (u.clone(), String::new()),
            Some(Owner::Team(t)) => (String::new(), t.clone()),
            None => (d.owner.clone().unwrap_or_default(), String::new()),
        };
        pb::Dataset {
            id: d.id.to_string(),
            name: d.name.clone(),
            owner_user,
            owner_team,
            created_unix_ms: d.created_us / 1000,
        }
    }

    /// Gate plus name validation (a malformed name is refused and audited).
    fn admit<T>(
        &self,
        req: &Request<T>,
        op: Operation,
        ds: Option<&str>,
        key: Option<&str>,
    ) -> Result<(Call, Option<DatasetId>, Option<ObjectKey>), Status> {
        let resource = match (ds, key) {
            (Some(d), Some(k)) => obj_resource(d, k),
            (Some(d), None) => ds_resource(d),
            _ => "datasets".to_owned(),
        };
        let call = self
            .0
            .gate(req.metadata(), req.extensions(), op, ds, &resource)?;
        let invalid = |e: StoreError| {
            self.0.refuse(Refusal {
                user: Some(call.user.clone()),
                task_id: call.event.task_id.as_deref(),
                ..Refusal::new(Code::InvalidArgument, op.name(), &resource, e.to_string())
            })
        };
        let ds = ds.map(DatasetId::new).transpose().map_err(invalid)?;
        let key = key.map(ObjectKey::new).transpose().map_err(invalid)?;
        Ok((call, ds, key))
    }

    /// Records the event of a read (`ev`, the call's allowed-event
    /// template; queued, not awaited) and passes the result on.
    fn record_read<T>(&self, mut ev: AuditEvent, r: Result<T, StoreError>) -> Result<T, Status> {
        ev.ts_us = crate::audit::now_us();
        match r {
            Ok(v) => {
                self.0.sink.record(ev);
                Ok(v)
            }
            Err(e) => {
                ev.outcome = Outcome::Error(e.to_string());
                self.0.sink.record(ev);
                Err(status_of(&e))
            }
        }
    }
}

fn need<T>(v: Option<T>) -> Result<T, Status> {
    v.ok_or_else(|| Status::internal("missing validated name"))
}

#[tonic::async_trait]
impl pb::data_server::Data for DataSvc {
    async fn create_dataset(
        &self,
        request: Request<pb::CreateDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let (call, _, _) = self.admit(&request, Operation::DatasetCreate, None, None)?;
        let name = request.into_inner().name;
        if name.is_empty() || name.chars().count() > 200 {
            let ev = call
                .event
                .clone()
                .denied("dataset name must be 1..200 characters");
            self.0.sink.record(ev);
            return Err(Status::invalid_argument(
                "dataset name must be 1..200 characters",
            ));
        }
        let new = NewDataset {
            id: None,
            name,
            owner: Some(call.user.clone()),
            metadata: Default::default(),
        };
        let created = self
            .0
            .backend
            .create_dataset(call.event, new)
            .await
            .map_err(|e| status_of(&e))?;
        let info = created.value;
        self.0
            .authz
            .set_dataset_owner(info.id.as_str(), &Owner::User(call.user.clone()))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, dataset = %info.id, "record dataset owner");
                Status::internal("recording the dataset owner failed")
            })?;
        drop(call.permit);
        Ok(Response::new(self.pb_dataset(&info)))
    }

    async fn list_datasets(
        &self,
        request: Request<pb::ListDatasetsRequest>,
    ) -> Result<Response<pb::ListDatasetsResponse>, Status> {
        let (call, _, _) = self.admit(&request, Operation::DatasetList, None, None)?;
        let all = self.record_read(call.event, self.0.backend.list_datasets().await)?;
        let snap = self.0.authz.snapshot();
        let datasets = all
            .iter()
            .filter(|d| snap.may_read(&call.user, d.id.as_str()))
            .map(|d| self.pb_dataset(d))
            .collect();
        Ok(Response::new(pb::ListDatasetsResponse { datasets }))
    }

    async fn get_dataset(
        &self,
        request: Request<pb::GetDatasetRequest>,
    ) -> Result<Response<pb::Dataset>, Status> {
        let ds = request.get_ref().dataset_id.clone();
        let (call, ds, _) = self.admit(&request, Operation::DatasetGet, Some(&ds), None)?;
        let ds = need(ds)?;
        let info = self.record_read(call.event, self.0.backend.get_dataset(&ds).await)?;
        Ok(Response::new(self.pb_dataset(&info)))
    }

    async fn put_object(
        &self,
        request: Request<Streaming<pb::PutObjectRequest>>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        let limits = self.0.limiter.limits().clone();
        let deadline = limits.stream_deadline();
        let (metadata, extensions, mut stream) = request.into_parts();
        let first = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + limits.stream_idle_timeout),
            stream.message(),
        )
        .await;
        let header = match first {
            Ok(Ok(Some(pb::PutObjectRequest {
                part: Some(pb::put_object_request::Part::Header(h)),
            }))) => h,
            Ok(Err(s)) => return Err(s),
            Err(_) => {
                let reason = LimitExceeded::StreamIdle(limits.stream_idle_timeout).to_string();
                return Err(self.0.refuse(Refusal::new(
                    Code::ResourceExhausted,
                    Operation::ObjectPut.name(),
                    "datasets",
                    reason,
                )));
            }
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first PutObjectRequest must carry the header",
                ));
            }
        };
        let fake = Request::from_parts(metadata, extensions, ());
        let (call, ds, key) = self.admit(
            &fake,
            Operation::ObjectPut,
            Some(&header.dataset_id),
            Some(&header.key),
        )?;
        let (ds, key) = (need(ds)?, need(key)?);
        let expect = expect_of(header.expected_version)?;
        let cut: Arc<Mutex<Option<Status>>> = Arc::default();
        let content = limited_content(
            stream,
            deadline,
            limits.max_stream_duration,
            limits.stream_idle_timeout,
            cut.clone(),
        );
        let metadata = if header.metadata.is_empty() {
            None
        } else {
            Some(header.metadata.into_iter().collect())
        };
        let r = self
            .0
            .backend
            .put_object(call.event, &ds, &key, expect, metadata, content)
            .await;
        drop(call.permit);
        match r {
            Ok(a) => Ok(Response::new(pb_info(&a.value))),
            Err(e) => {
                let limit = cut.lock().ok().and_then(|mut g| g.take());
                Err(limit.unwrap_or_else(|| status_of(&e)))
            }
        }
    }

    type GetObjectStream = ReceiverStream<Result<pb::GetObjectResponse, Status>>;

    async fn get_object(
        &self,
        request: Request<pb::GetObjectRequest>,
    ) -> Result<Response<Self::GetObjectStream>, Status> {
        let r = request.get_ref().clone();
        let (call, ds, key) = self.admit(
            &request,
            Operation::ObjectGet,
            Some(&r.dataset_id),
            Some(&r.key),
        )?;
        let (ds, key) = (need(ds)?, need(key)?);
        let version = match r.version {
            0 => None,
            n => {
                Some(Version(i64::try_from(n).map_err(|_| {
                    Status::invalid_argument("version out of range")
                })?))
            }
        };
        let (info, mut content) = self.record_read(
            call.event,
            self.0.backend.get_object(&ds, &key, version).await,
        )?;
        let limits = self.0.limiter.limits().clone();
        let deadline = limits.stream_deadline();
        let (tx, rx) = mpsc::channel(4);
        let inst = self.0.clone();
        tokio::spawn(async move {
            let _permit = call.permit;
            let send = |m: Result<pb::GetObjectResponse, Status>| {
                let tx = tx.clone();
                async move { tokio::time::timeout_at(deadline, tx.send(m)).await }
            };
            let first = pb::GetObjectResponse {
                part: Some(pb::get_object_response::Part::Info(pb_info(&info))),
            };
            if !matches!(send(Ok(first)).await, Ok(Ok(()))) {
                return;
            }
            while let Some(chunk) = content.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = send(Err(status_of(&e))).await;
                        return;
                    }
                };
                for piece in chunk.chunks(MAX_CHUNK_SIZE) {
                    let m = pb::GetObjectResponse {
                        part: Some(pb::get_object_response::Part::Chunk(piece.to_vec())),
                    };
                    match send(Ok(m)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return, // the client went away
                        Err(_) => {
                            let reason = LimitExceeded::StreamDuration(limits.max_stream_duration)
                                .to_string();
                            let resource = obj_resource(ds.as_str(), key.as_str());
                            let _ = tx.try_send(Err(inst.refuse(Refusal::new(
                                Code::ResourceExhausted,
                                Operation::ObjectGet.name(),
                                &resource,
                                reason,
                            ))));
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_objects(
        &self,
        request: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsResponse>, Status> {
        let r = request.get_ref().clone();
        let (call, ds, _) =
            self.admit(&request, Operation::ObjectList, Some(&r.dataset_id), None)?;
        let ds = need(ds)?;
        let opts = ListObjects {
            prefix: Some(r.prefix).filter(|p| !p.is_empty()),
            after: None,
            limit: 0,
        };
        let list = self.record_read(call.event, self.0.backend.list_objects(&ds, &opts).await)?;
        Ok(Response::new(pb::ListObjectsResponse {
            objects: list.iter().map(pb_info).collect(),
        }))
    }

    async fn delete_object(
        &self,
        request: Request<pb::DeleteObjectRequest>,
    ) -> Result<Response<pb::DeleteObjectResponse>, Status> {
        let r = request.get_ref().clone();
        let (call, ds, key) = self.admit(
            &request,
            Operation::ObjectDelete,
            Some(&r.dataset_id),
            Some(&r.key),
        )?;
        let (ds, key) = (need(ds)?, need(key)?);
        let expect = expect_of(r.expected_version)?;
        let a = self
            .0
            .backend
            .delete_object(call.event, &ds, &key, expect)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb::DeleteObjectResponse {
            version: u64::try_from(a.value.version.0).unwrap_or(0),
        }))
    }

    async fn get_metadata(
        &self,
        request: Request<pb::GetMetadataRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        let r = request.get_ref().clone();
        let (call, ds, key) = self.admit(
            &request,
            Operation::MetadataGet,
            Some(&r.dataset_id),
            Some(&r.key),
        )?;
        let (ds, key) = (need(ds)?, need(key)?);
        let info = self.record_read(
            call.event,
            self.0.backend.head_object(&ds, &key, None).await,
        )?;
        Ok(Response::new(pb_info(&info)))
    }

    async fn set_metadata(
        &self,
        request: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::ObjectInfo>, Status> {
        let r = request.get_ref().clone();
        let (call, ds, key) = self.admit(
            &request,
            Operation::MetadataSet,
            Some(&r.dataset_id),
            Some(&r.key),
        )?;
        let (ds, key) = (need(ds)?, need(key)?);
        let expect = expect_of(r.expected_version)?;
        let md = r.metadata.into_iter().collect();
        let a = self
            .0
            .backend
            .set_metadata(call.event, &ds, &key, expect, md)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(pb_info(&a.value)))
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let r = request.get_ref().clone();
        let (call, ds, key) = self.admit(
            &request,
            Operation::VersionList,
            Some(&r.dataset_id),
            Some(&r.key),
        )?;
        let (ds, key) = (need(ds)?, need(key)?);
        let mut list =
            self.record_read(call.event, self.0.backend.list_versions(&ds, &key).await)?;
        list.reverse(); // newest first, as the protocol documents
        Ok(Response::new(pb::ListVersionsResponse {
            versions: list.iter().map(pb_info).collect(),
        }))
    }
}

/// The chunks of a PutObject stream as a [`ByteStream`], cut (with the
/// reason left in `cut`) when the stream outlives `deadline`, idles longer
/// than `idle`, or sends a chunk above [`MAX_CHUNK_SIZE`].
fn limited_content(
    stream: Streaming<pb::PutObjectRequest>,
    deadline: tokio::time::Instant,
    max_duration: std::time::Duration,
    idle: std::time::Duration,
    cut: Arc<Mutex<Option<Status>>>,
) -> ByteStream {
    let max_total = deadline;
    futures::stream::unfold(Some(stream), move |st| {
        let cut = cut.clone();
        async move {
            let mut stream = st?;
            let set = |s: Status| {
                let msg = s.message().to_owned();
                if let Ok(mut g) = cut.lock() {
                    *g = Some(s);
                }
                msg
            };
            let until = max_total.min(tokio::time::Instant::now() + idle);
            match tokio::time::timeout_at(until, stream.message()).await {
                Err(_) => {
                    let e = if tokio::time::Instant::now() >= max_total {
                        LimitExceeded::StreamDuration(max_duration)
                    } else {
                        LimitExceeded::StreamIdle(idle)
                    };
                    let msg = set(Status::resource_exhausted(e.to_string()));
                    Some((Err(StoreError::Input(msg)), None))
                }
                Ok(Err(s)) => {
                    let msg = set(s);
                    Some((Err(StoreError::Input(msg)), None))
                }
                Ok(Ok(None)) => None,
                Ok(Ok(Some(m))) => match m.part {
                    Some(pb::put_object_request::Part::Chunk(c)) if c.len() > MAX_CHUNK_SIZE => {
                        let msg = set(Status::out_of_range(format!(
                            "chunk of {} bytes exceeds MAX_CHUNK_SIZE ({MAX_CHUNK_SIZE})",
                            c.len()
                        )));
                        Some((Err(StoreError::Input(msg)), None))
                    }
                    Some(pb::put_object_request::Part::Chunk(c)) => Some((Ok(c), Some(stream))),
                    _ => {
                        let msg = set(Status::invalid_argument(
                            "only the first PutObjectRequest may carry a header",
                        ));
                        Some((Err(StoreError::Input(msg)), None))
                    }
                },
            }
        }
    })
    .boxed()
}
