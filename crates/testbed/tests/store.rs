//! The embedded store's multipart completion, through the AWS SDK: it answers as S3 does
//! (ETag of the parts' MD5s, full-object CRC64NVME, refusals that assemble nothing).

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumMode, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use md5::{Digest, Md5};
use testbed::{EmbeddedServer, ServerConfig};

const MIB: usize = 1 << 20;

fn client(server: &EmbeddedServer) -> aws_sdk_s3::Client {
    let c = server.config();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(server.endpoint_url())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(&c.access_key, &c.secret_key, None, None, "test"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn crc_b64(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data);
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

fn part(number: i32, e_tag: &str) -> CompletedPart {
    CompletedPart::builder().part_number(number).e_tag(e_tag).build()
}

async fn complete(
    s3: &aws_sdk_s3::Client,
    key: &str,
    upload: &str,
    parts: Vec<CompletedPart>,
    crc: &str,
) -> Result<aws_sdk_s3::operation::complete_multipart_upload::CompleteMultipartUploadOutput, String> {
    s3.complete_multipart_upload()
        .bucket("bkt")
        .key(key)
        .upload_id(upload)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .checksum_crc64_nvme(crc)
        .checksum_type(aws_sdk_s3::types::ChecksumType::FullObject)
        .send()
        .await
        .map_err(|e| e.code().unwrap_or("?").to_owned())
}

/// Uploads `bodies` as parts 1.. of a new upload of `key`: (upload id, ETags).
async fn upload(s3: &aws_sdk_s3::Client, key: &str, bodies: &[Vec<u8>]) -> (String, Vec<String>) {
    let created = s3
        .create_multipart_upload()
        .bucket("bkt")
        .key(key)
        .content_type("text/csv")
        .metadata("origin", "test")
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc64Nvme)
        .checksum_type(aws_sdk_s3::types::ChecksumType::FullObject)
        .send()
        .await
        .unwrap();
    let id = created.upload_id().unwrap().to_owned();
    let mut tags = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let out = s3
            .upload_part()
            .bucket("bkt")
            .key(key)
            .upload_id(&id)
            .part_number(i as i32 + 1)
            .checksum_crc64_nvme(crc_b64(body))
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap();
        tags.push(out.e_tag().unwrap().to_owned());
    }
    (id, tags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_multipart_upload_answers_as_s3_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedServer::start(ServerConfig::ephemeral(dir.path())).await.unwrap();
    server.create_bucket("bkt").unwrap();
    let s3 = client(&server);
    let bodies: Vec<Vec<u8>> = [5 * MIB, 5 * MIB, 1000]
        .iter()
        .enumerate()
        .map(|(p, &len)| (0..len).map(|i| (i * (p + 3) % 251) as u8).collect())
        .collect();
    let whole = bodies.concat();
    let (id, tags) = upload(&s3, "o.csv", &bodies).await;
    let listed = |order: [usize; 3]| order.iter().enumerate().map(|(i, &p)| part(i as i32 + 1, &tags[p])).collect();

    // Refusals assemble nothing and leave the upload open.
    assert_eq!(complete(&s3, "o.csv", &id, listed([1, 0, 2]), &crc_b64(&whole)).await.unwrap_err(), "InvalidPart");
    let swapped = vec![part(2, &tags[1]), part(1, &tags[0]), part(3, &tags[2])];
    assert_eq!(complete(&s3, "o.csv", &id, swapped, &crc_b64(&whole)).await.unwrap_err(), "InvalidPartOrder");
    assert_eq!(complete(&s3, "o.csv", &id, listed([0, 1, 2]), &crc_b64(b"other")).await.unwrap_err(), "BadDigest");
    assert!(s3.head_object().bucket("bkt").key("o.csv").send().await.is_err(), "nothing was assembled");

    let done = complete(&s3, "o.csv", &id, listed([0, 1, 2]), &crc_b64(&whole)).await.unwrap();
    let md5s: Vec<u8> = bodies.iter().flat_map(|b| Md5::digest(b).to_vec()).collect();
    let md5_hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let expected_tag = format!("\"{}-3\"", md5_hex(&Md5::digest(&md5s)));
    assert_eq!(done.e_tag(), Some(expected_tag.as_str()), "S3's multipart ETag");
    assert_eq!(done.checksum_crc64_nvme(), Some(crc_b64(&whole).as_str()));

    let got = s3.get_object().bucket("bkt").key("o.csv").checksum_mode(ChecksumMode::Enabled).send().await.unwrap();
    assert_eq!(got.e_tag(), Some(expected_tag.as_str()));
    assert_eq!(got.checksum_crc64_nvme(), Some(crc_b64(&whole).as_str()));
    assert_eq!(got.content_type(), Some("text/csv"));
    assert_eq!(got.metadata().and_then(|m| m.get("origin")).map(String::as_str), Some("test"));
    assert!(got.body.collect().await.unwrap().into_bytes() == whole, "the parts joined in order");

    // The upload is gone, with every file it had.
    let open = s3.list_multipart_uploads().bucket("bkt").send().await.unwrap();
    assert!(open.uploads().is_empty(), "{open:?}");
    assert_eq!(complete(&s3, "o.csv", &id, listed([0, 1, 2]), &crc_b64(&whole)).await.unwrap_err(), "NoSuchUpload");
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&id))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A key that climbs out of the bucket is refused, and nothing is written outside it.
    let (escape, tags) = upload(&s3, "a/../../escape", &[vec![7; 1000]]).await;
    let err = complete(&s3, "a/../../escape", &escape, vec![part(1, &tags[0])], &crc_b64(&[7; 1000])).await;
    assert_eq!(err.unwrap_err(), "InvalidArgument");
    assert!(!dir.path().join("escape").exists());

    // Only the last part may be under 5 MiB.
    let (short, tags) = upload(&s3, "short", &[vec![1; 1000], vec![2; 1000]]).await;
    let parts = vec![part(1, &tags[0]), part(2, &tags[1])];
    let err = complete(&s3, "short", &short, parts, &crc_b64(&[vec![1; 1000], vec![2; 1000]].concat())).await;
    assert_eq!(err.unwrap_err(), "EntityTooSmall");
}
