"""Fine-tuning. The data side (``templates``, ``tokenizer``, ``packing``, ``data``, ``batches``) and the model
side (``model``, ``loss``) are plain torch/transformers; ``loop`` is the worker (DeepSpeed, with Ray only at its
edges: ``train_loop_per_worker``; ``train_single_process`` runs it without Ray) and ``recipe`` the driver that
packs the corpus, starts Ray Train and tracks the run in MLflow."""
