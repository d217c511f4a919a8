//! A complete, minimal Hutch plugin built on the client helper: it offers one
//! action, `copy`, which streams each input object into `<key>.copy` in the
//! same dataset and yields the copies as outputs. Run it under `hutchd try`
//! (it reads `$HUTCH_SOCKET`).

use hutch_plugin_protocol::client::{self, AgentSession, ClientError, TaskReporter};
use hutch_plugin_protocol::plugin::v1 as pb;
use tonic::transport::Channel;

/// Copies every input of `task`; the task's result is the number copied.
async fn copy(
    channel: Channel,
    task: pb::TaskAssignment,
    report: TaskReporter,
) -> Result<String, String> {
    let mut data = client::data_client(channel);
    let tid = Some(task.task_id.as_str());
    let n = task.inputs.len().max(1) as f32;
    for (i, input) in task.inputs.iter().enumerate() {
        let req = pb::GetObjectRequest {
            dataset_id: input.dataset_id.clone(),
            key: input.key.clone(),
            version: input.version,
        };
        let mut content = Vec::new();
        client::get_object(&mut data, tid, req, &mut content)
            .await
            .map_err(|e| e.to_string())?;
        let key = format!("{}.copy", input.key);
        let info = client::put_bytes(&mut data, tid, &input.dataset_id, &key, None, &content)
            .await
            .map_err(|e| e.to_string())?;
        let made = pb::ObjectRef {
            dataset_id: info.dataset_id,
            key: info.key,
            version: info.version,
        };
        let e = |e: ClientError| e.to_string();
        report.output("copy", "null", Some(made)).await.map_err(e)?;
        report
            .progress(100.0 * (i + 1) as f32 / n, "copied")
            .await
            .map_err(e)?;
    }
    Ok(format!("{{\"copied\": {}}}", task.inputs.len()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let channel = client::connect_from_env().await?;
    let agent = AgentSession::hello(channel.clone(), &["copy"]).await?;
    eprintln!(
        "copy plugin: instance {} with scopes {:?}",
        agent.welcome.instance_id, agent.welcome.granted_scopes
    );
    agent
        .run_tasks(move |task, report| copy(channel.clone(), task, report))
        .await
}
