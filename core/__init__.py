"""The style studio's engine: models, methods and storage. Never imports gradio."""
