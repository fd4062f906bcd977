"""A toy training loop (plain Python, no framework): logs hparams and per-epoch metrics with the
XT Run API and writes a model file and a metrics CSV into its output dir.

    xt run examples/train.py --lr=[0.01,0.1] --opt=[sgd,adam] --epochs=5 --wait
"""
import argparse
import math
import os
import random

from xt_submit import Run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--opt", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    run = Run()
    run.log_hparams(vars(args))
    rng = random.Random(args.seed)
    output_dir = run.output_dir
    os.makedirs(output_dir, exist_ok=True)

    loss = float("nan")
    start_epoch = (run.get_checkpoint() or {}).get("epoch", 0)  # resume after a preemption
    speed = args.lr * (3.0 if args.opt == "adam" else 1.0)
    with open(os.path.join(output_dir, "metrics.csv"), "a") as csv:
        for epoch in range(start_epoch + 1, args.epochs + 1):
            loss = math.exp(-speed * epoch * 4) + rng.uniform(0, 0.02)
            acc = 1.0 - loss / 2
            run.log_metrics({"epoch": epoch, "loss": loss, "acc": acc}, step_name="epoch")
            csv.write(f"{epoch},{loss:.5f},{acc:.5f}\n")
            print(f"epoch {epoch}: loss={loss:.4f} acc={acc:.4f}", flush=True)
            run.set_checkpoint({"epoch": epoch})
    with open(os.path.join(output_dir, "model.txt"), "w") as model:
        model.write(f"lr={args.lr} opt={args.opt} final_loss={loss:.6f}\n")
    run.close()


if __name__ == "__main__":
    main()
