"""AWS Lambda backend and the serverless worker handler (also used by the gateway)."""
