//! A tiny read-only image registry (Docker's registry API v2) on 127.0.0.1, serving one image
//! made of local files, so a test can watch the engine really pull: no registry is reachable
//! from this machine, and the engine treats 127.0.0.0/8 as an insecure (plain HTTP) registry.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// One layer of the served image: files (path, bytes, mode) and symlinks (path, target).
pub struct Layer {
    pub files: Vec<(String, Vec<u8>, u32)>,
    pub links: Vec<(String, String)>,
}

/// Serves `repository:tag` until dropped.
pub struct Registry {
    /// `127.0.0.1:PORT/repository:tag`, to give the engine.
    pub image: String,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Registry {
    pub async fn serve(repository: &str, tag: &str, layers: &[Layer]) -> Registry {
        let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
        let (mut diff_ids, mut layer_refs) = (Vec::new(), Vec::new());
        for layer in layers {
            let tar = layer_tar(layer);
            diff_ids.push(digest(&tar));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&tar).expect("gzip");
            let compressed = gz.finish().expect("gzip");
            let id = digest(&compressed);
            layer_refs.push(serde_json::json!({"mediaType": LAYER_TYPE, "size": compressed.len(), "digest": id}));
            blobs.insert(id, compressed);
        }
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("config json");
        let config_id = digest(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "size": config.len(), "digest": config_id},
            "layers": layer_refs,
        }))
        .expect("manifest json");
        blobs.insert(config_id, config);
        let manifest_id = digest(&manifest);

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the registry");
        let port = listener.local_addr().expect("addr").port();
        let content = Arc::new(Content {
            repository: repository.to_string(),
            tag: tag.to_string(),
            manifest,
            manifest_id,
            blobs,
        });
        let serving = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, content.clone()));
            }
        });
        Registry { image: format!("127.0.0.1:{port}/{repository}:{tag}"), serving }
    }
}

struct Content {
    repository: String,
    tag: String,
    manifest: Vec<u8>,
    manifest_id: String,
    blobs: HashMap<String, Vec<u8>>,
}

/// Answers one request per connection (`Connection: close`): enough for the engine's client.
async fn answer(mut stream: tokio::net::TcpStream, content: Arc<Content>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let manifests = format!("/v2/{}/manifests/", content.repository);
    let blobs = format!("/v2/{}/blobs/", content.repository);
    let (status, kind, digest, body): (&str, &str, Option<&str>, &[u8]) = if path == "/v2/" {
        ("200 OK", "application/json", None, b"{}")
    } else if let Some(reference) = path.strip_prefix(&manifests) {
        if reference == content.tag || reference == content.manifest_id {
            ("200 OK", MANIFEST_TYPE, Some(&content.manifest_id), &content.manifest)
        } else {
            ("404 Not Found", "application/json", None, b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}")
        }
    } else if let Some((id, blob)) = path.strip_prefix(&blobs).and_then(|id| content.blobs.get_key_value(id)) {
        ("200 OK", "application/octet-stream", Some(id), blob)
    } else {
        ("404 Not Found", "application/json", None, b"{\"errors\":[{\"code\":\"NAME_UNKNOWN\"}]}")
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(digest) = digest {
        response.push_str(&format!("Docker-Content-Digest: {digest}\r\n"));
    }
    response.push_str("\r\n");
    let mut bytes = response.into_bytes();
    if method != "HEAD" {
        bytes.extend_from_slice(body);
    }
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

fn layer_tar(layer: &Layer) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data, mode) in &layer.files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        tar.append_data(&mut header, path, data.as_slice()).expect("tar file");
    }
    for (path, target) in &layer.links {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        tar.append_link(&mut header, path, target).expect("tar link");
    }
    tar.into_inner().expect("tar")
}
