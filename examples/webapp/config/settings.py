# Someone pasted a cloud key here. `ifc check --workspace` flags it: it is not labelled secret.
AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
REGION = "eu-west-1"
