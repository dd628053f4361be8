"""Copy a file or a directory tree to or from S3 with boto3's CRT transfer manager.

Run inside bench/.venv (boto3, s3transfer, awscrt):

    crt_cp.py --endpoint-url URL upload FILE s3://bucket/key
    crt_cp.py --endpoint-url URL upload --recursive DIR s3://bucket/prefix
    crt_cp.py --endpoint-url URL download s3://bucket/key FILE
    crt_cp.py --endpoint-url URL download --recursive s3://bucket/prefix DIR

boto3's own `TransferConfig(preferred_transfer_client="crt")` path cannot be used here: boto3
builds its CRT client with TLS always on and the endpoint always AWS's
(boto3/crt.py: `use_ssl=True`, `endpoint_url=None`), so against a local plain-HTTP endpoint it
would connect to s3.amazonaws.com. This helper builds the same CRTTransferManager that boto3
builds, from s3transfer's public pieces, with TLS off, the benchmark's endpoint and path-style
addressing, and leaves every transfer setting at the CRT defaults.
"""

import argparse
import os
import sys

import awscrt.auth
import botocore.config
import botocore.session
from s3transfer.crt import BotocoreCRTRequestSerializer, CRTTransferManager, create_s3_crt_client


def split_s3_url(url):
    if not url.startswith("s3://"):
        sys.exit(f"not an s3:// URL: {url}")
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def make_manager(endpoint_url, region):
    session = botocore.session.get_session()
    creds = session.get_credentials().get_frozen_credentials()
    provider = awscrt.auth.AwsCredentialsProvider.new_static(creds.access_key, creds.secret_key, creds.token)
    crt_client = create_s3_crt_client(region, crt_credentials_provider=provider, use_ssl=endpoint_url.startswith("https:"))
    path_style = botocore.config.Config(s3={"addressing_style": "path"})
    client_kwargs = {"region_name": region, "endpoint_url": endpoint_url, "config": path_style}
    serializer = BotocoreCRTRequestSerializer(session, dict(client_kwargs))
    listing_client = session.create_client("s3", **client_kwargs)
    return CRTTransferManager(crt_client, serializer), listing_client


def upload(manager, source, dest_url, recursive):
    bucket, key = split_s3_url(dest_url)
    if not recursive:
        return [manager.upload(source, bucket, key)]
    prefix = key.rstrip("/")
    futures = []
    for dirpath, _, files in os.walk(source):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, source).replace(os.sep, "/")
            futures.append(manager.upload(path, bucket, f"{prefix}/{rel}"))
    return futures


def download(manager, listing_client, source_url, dest, recursive):
    bucket, key = split_s3_url(source_url)
    if not recursive:
        return [manager.download(bucket, key, dest)]
    prefix = key.rstrip("/") + "/"
    futures = []
    for page in listing_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            path = os.path.join(dest, *obj["Key"][len(prefix):].split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            futures.append(manager.download(bucket, obj["Key"], path))
    return futures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    parser.add_argument("direction", choices=["upload", "download"])
    parser.add_argument("--recursive", action="store_true")
    parser.add_argument("source")
    parser.add_argument("dest")
    args = parser.parse_args()

    manager, listing_client = make_manager(args.endpoint_url, args.region)
    with manager:
        if args.direction == "upload":
            futures = upload(manager, args.source, args.dest, args.recursive)
        else:
            futures = download(manager, listing_client, args.source, args.dest, args.recursive)
        for future in futures:
            future.result()
    print(f"{args.direction}ed {len(futures)} object(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
