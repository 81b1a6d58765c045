import os

keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "SHOAL_RANK", "SHOAL_MASTER_PORT", "SHOAL_SECRET", "SHOAL_RESTART_COUNT"]
print("ENV " + " ".join(f"{k}={os.environ.get(k)}" for k in keys))
