"""What a Batch task hands its node (the Batch adapter writes it, entrypoints/batch_node.py reads
it): the environment's names, service addresses only and never a secret, and where Batch puts
the code zip it fetched."""

CODE_FILE = "xt/code.zip"  # the resource file, relative to the task's working dir
TASK_ENV = "XT_TASK"  # the RunTask, as JSON
NODE_ENV = ("XT_STORAGE_ACCOUNT_URL", "XT_STORAGE_CONTAINER", "XT_SERVICEBUS_NAMESPACE", "XT_EVENTS_QUEUE",
            "XT_IDENTITY_CLIENT_ID")
