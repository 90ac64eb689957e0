"""The registry boundary: the only importer of quilt3, boto3 and botocore."""
