"""QLoRA vs LoRA vs full fine-tuning on the default corpus: each trained with the
default config's steps and batch, then scored against the base model on the held-out
test split (bootstrap 95% CIs), reported as gain per minute of training.

    python bench/methods.py [--steps 40] [--methods qlora lora full]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from qaforge.evaluation import AnswerCache, ModelRef, System, evaluate, question_sets
from qaforge.evaluation.report import metrics_text
from qaforge.modeling import resolve_base_model
from qaforge.records import ModelLabel
from qaforge.served import Answering
from qaforge.training import train

from common import default_config, default_dataset

# Each method at its own learning rate, whatever the default config's method is: full
# fine-tuning moves every weight, so the LoRA rate would wreck the model, and the full
# rate barely moves an adapter.
LEARNING_RATES = {"qlora": 3e-4, "lora": 3e-4, "full": 3e-5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--methods", nargs="+", choices=list(LEARNING_RATES), default=list(LEARNING_RATES))
    args = parser.parse_args()
    config = default_config()
    data = default_dataset(config)
    base_dir = resolve_base_model(config.model)
    evaluation = config.evaluation
    metric = evaluation.primary_metric
    rows = []
    for method in args.methods:
        cfg = config.training.model_copy(
            update={"method": method, "max_steps": args.steps or config.training.max_steps}
            | {"learning_rate": LEARNING_RATES[method]}
        )
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run = train(data, config.model, cfg.model_copy(update={"output_dir": Path(tmp)}), config.prompt)
            minutes = (time.perf_counter() - start) / 60
            asked = Answering(config.prompt.system_prompt)
            models = {ModelLabel.CANDIDATE: System(ModelRef(str(run.model_dir)), asked),
                      ModelLabel.BASE: System(ModelRef(base_dir, identity=base_dir), asked)}
            test = {"test": question_sets(data, evaluation)["test"]}
            report = evaluate(models, test, evaluation, cache=AnswerCache(evaluation.cache_dir))
        print(metrics_text(report.sets["test"].metrics), flush=True)
        gain = report.sets["test"].gain(metric, ModelLabel.BASE)
        general = next((c for c in report.guard.comparisons), None) if report.guard else None
        rows.append((method, cfg.learning_rate, run.fit.steps, minutes, run.fit.best_val_loss, gain, general))
    print(f"\n{'method':<7}{'lr':>8}{'steps':>6}{'train min':>10}{'best val':>9}{metric:>9}"
          f"{'gain [95% CI]':>27}{'gain/min':>9}{'general Δ':>10}")
    for method, lr, steps, minutes, val, gain, general in rows:
        interval = f"{gain.gain:+.4f} [{gain.low:+.4f}, {gain.high:+.4f}]"
        print(f"{method:<7}{lr:>8.0e}{steps:>6}{minutes:>10.1f}{val or float('nan'):>9.4f}{gain.value_a:>9.4f}"
              f"{interval:>27}{gain.gain / minutes:>9.4f}{general.gain if general else float('nan'):>+10.4f}")


if __name__ == "__main__":
    main()
