"""What the workflow runs for a validated config, decided without torch: the files of every job
(inputs and outputs, nothing read or written undeclared), the resolved settings each job gets
once, and what each notebook is given. `workflow/rules/common.smk` asks this module and keeps no
list of study types: a study's job kind, inputs and notebook come from its module
(`knockout.studies`).

Paths are relative to the working directory: the workflow's files under `results/`, and the
user's files as the config names them (`knockout.paths`: a relative one is from the working
directory too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .archs import is_weights_file
from .catalog import raw_entry, split_files, view_name
from .paths import config_path
from .preprocess import resolve  # torchvision only for a model's weights metadata
from .settings import (
    AdoptSettings,
    DownloadSettings,
    PrepareSettings,
    StudySettings,
    TrainSettings,
    UnitsSettings,
)
from .studies import StudyType, slug, study_type
from .tables import TABLES
from .targets import local_files, target_file

# What each job writes per study, model and seed, beside `seed{seed}`, by output name (the
# outputs of the rules intervene, collect and probe; `Plan.per_seed` with one of them).
PER_SEED = {"evaluate": TABLES, "retrain": TABLES, "probe": {"table": TABLES["table"], "arrays": ".npz"}}
MODEL_FILES = ("init.pt", "final.pt", "history.csv", "metrics.json")  # what `train` writes, + the epochs/ folder
RUN_FILES = (*MODEL_FILES, "predictions.npz", "condition.json")  # what `retrain` writes: one retrained condition
# What one shard of a sharded study writes per seed (`shards/seed{seed}/shard{i}`), by job.
SHARD_FILE = {"evaluate": ".pt", "probe": ".npz"}


def parse_study(entry: dict) -> tuple[StudyType, Any]:
    """A validated study entry -> (its `StudyType`, its parsed `Spec`): the one place a study's
    entry is parsed (once per process: by the `Plan`, or by a study's job)."""
    study = study_type(entry["type"])
    return study, study.Spec.from_dict(entry)


@dataclass(frozen=True)
class Study:
    """One configured study as the workflow sees it."""

    name: str
    type: StudyType
    model: str
    needs: frozenset[str]  # init, checkpoints, unit_stats, unit_values
    conditions: tuple[str, ...]  # retrain: the trained conditions' names
    entry: dict  # the validated config entry (what its jobs get)
    spec: Any  # the entry parsed: its study type's `Spec`
    shards: int | str = 1  # jobs per seed (`knockout.shards`): 1 (one job), N, or auto

    @property
    def job(self) -> str:
        """The job that runs it: evaluate | retrain | probe."""
        return self.type.job


class Plan:
    """The jobs and files of one config (validated, defaults filled)."""

    def __init__(self, config: dict):
        self.config = config
        self.notes: list[str] = []  # what the config check had to say besides errors (knockout.config)
        self.seeds = [int(s) for s in config["seeds"]]
        self.models = sorted(config["models"])
        self.datasets = sorted(config["datasets"])
        self.studies = {name: self._study(name, entry) for name, entry in config["interventions"].items()}
        self._preprocess = {name: resolve(name, model) for name, model in config["models"].items()}
        # The prepared views: each dataset at each geometry a model asks for.
        self.views = {self.view(m): (self.dataset_of(m), self._preprocess[m]["geometry"]) for m in self.models}

    @staticmethod
    def _study(name: str, entry: dict) -> Study:
        from .shards import check_shards

        study, spec = parse_study(entry)
        check_shards(f"interventions.{name}.shards", entry.get("shards", 1), study.shards)
        return Study(
            name=name,
            type=study,
            model=entry["model"],
            needs=frozenset(study.needs(spec)),
            conditions=tuple(study.condition_names(spec)) if study.job == "retrain" else (),
            entry=entry,
            spec=spec,
            shards=entry.get("shards", 1),
        )

    def names(self, job: str | None = None, sharded: bool | None = None) -> list[str]:
        """Study names, of one job or all; `sharded`: only those split into shards (or not)."""
        return [
            n
            for n, s in self.studies.items()
            if (job is None or s.job == job) and (sharded is None or (s.shards != 1) == sharded)
        ]

    def aggregated(self) -> list[str]:
        """The studies with a table over seeds."""
        return [n for n, s in self.studies.items() if s.type.aggregate]

    # --- data and models --------------------------------------------------------------------------

    def download_job(self, dataset: str) -> DownloadSettings:
        """The settings a `download` job gets: the dataset's entry without its subsets (a new
        subset re-prepares the data, it does not fetch it again), the mirrors, whether to download."""
        data = self.config["data"]
        entry = raw_entry(self.config["datasets"][dataset])
        return DownloadSettings(dataset=dataset, entry=entry, mirrors=data["mirrors"], download=data["download"])

    def prepare_job(self, view: str) -> PrepareSettings:
        """The settings a `prepare` job of a view gets: its dataset's entry (its subsets too) and
        the geometry the view's models ask for."""
        dataset, geometry = self.views[view]
        return PrepareSettings(dataset=dataset, entry=self.config["datasets"][dataset], geometry=geometry)

    def raw_inputs(self, dataset: str) -> dict[str, str | list[str]]:
        """The user's files a `download` job reads that the workflow watches: a tensors file, a
        module dataset's file and the modules beside it that it imports (an edit refetches it).
        Image folders are not (their files are many): after editing one, run `snakemake
        --forcerun download`; a prepare job that runs on a stale listing stops."""
        entry = self.config["datasets"][dataset]
        if entry.get("source") == "tensors":
            return {"tensors": str(config_path(entry["path"]))}
        files = local_files(entry["target"]) if entry.get("source") == "module" else []
        return {"module": [str(f) for f in files]} if files else {}

    def code(self, model: str) -> dict[str, list[str]]:
        """The files of a model's own network (`arch: {type: module}` from a file: it and the
        modules beside it that it imports), which its train or adopt job watches: an edit reruns
        them and what depends on them."""
        arch = self.config["models"][model]["arch"]
        files = local_files(arch["target"]) if isinstance(arch, dict) and arch.get("type") == "module" else []
        return {"code": [str(f) for f in files]} if files else {}

    def user_paths(self) -> list[tuple[str, str, str]]:
        """Every file and folder of the user's that the config names, as (key, path, `file` or
        `folder`): model and dataset files (`file.py:callable`), weights files, checkpoints (each
        seed's and epoch's), image folders, tensors files, and mirrors given as relative paths
        (mirrors elsewhere are places searched where they exist: the default ones are per machine).
        Every one is taken from the working directory when relative (`knockout.paths`)."""
        out = []
        for name in self.models:
            entry = self.config["models"][name]
            arch = entry["arch"]
            if isinstance(arch, dict) and arch.get("type") == "module" and target_file(arch["target"]):
                out.append((f"models.{name}.arch.target", str(target_file(arch["target"])), "file"))
            if isinstance(arch, dict) and arch.get("weights") and is_weights_file(arch["weights"], arch):
                out.append((f"models.{name}.arch.weights", arch["weights"], "file"))
            whole = isinstance(entry.get("checkpoints"), str)  # `checkpoints: pattern`: the final weights
            for part, paths in self.checkpoint_files(name).items():
                key = f"models.{name}.checkpoints" + (
                    "" if whole else ".epochs.pattern" if part == "epochs" else f".{part}"
                )
                out += [(key, path, "file") for path in paths]
        for name, entry in self.config["datasets"].items():
            source = entry.get("source")
            if source == "image_folder":
                out += [
                    (f"datasets.{name}.{split}", entry[split], "folder")
                    for split in ("train", "test")
                    if entry.get(split)
                ]
            elif source == "tensors":
                out.append((f"datasets.{name}.path", entry["path"], "file"))
            elif source == "module" and target_file(entry["target"]):
                out.append((f"datasets.{name}.target", str(target_file(entry["target"])), "file"))
        for i, mirror in enumerate(self.config["data"]["mirrors"]):
            if not config_path(mirror).is_absolute():
                out.append((f"data.mirrors.{i}", mirror, "folder"))
        return out

    def raw_dir(self, view: str) -> str:
        return f"results/raw/{self.views[view][0]}"

    def dataset_of(self, model: str) -> str:
        return self.config["models"][model]["dataset"]

    def preprocess(self, model: str) -> dict:
        """The model's resolved preprocessing (`knockout.preprocess.resolve`)."""
        return self._preprocess[model]

    def view(self, model: str) -> str:
        """The prepared view of its dataset the model reads: at the geometry its preprocessing asks
        for, else the dataset's own."""
        return view_name(self.dataset_of(model), self._preprocess[model]["geometry"])

    def data_dir(self, model: str) -> str:
        return f"results/data/{self.view(model)}"

    def data(self, model: str, train: bool = True, split: str | None = None) -> dict[str, str]:
        """The prepared files a job of `model` reads: the test split and meta, the train split too
        (or only `split`'s arrays beside meta)."""
        folder = self.data_dir(model)
        splits = [split] if split else ["test"] + (["train"] if train else [])
        files = {f"{s}_{array}": path for s in splits for array, path in split_files(folder, s).items()}
        return files | {"meta": f"{folder}/meta.json"}

    def model_dir(self, model: str, seed: int | str) -> str:
        return f"results/models/{model}/seed{seed}"

    def adopted(self, model: str) -> dict | None:
        """The weights the user gives for `model` instead of training it ({final, init, epochs:
        {pattern, list}, accuracy}, or {pretrained: True}: the arch's weights as they are), or None
        when it is trained here."""
        given = self.config["models"][model].get("checkpoints")
        if given == "pretrained":
            return {"pretrained": True}
        return {"final": given} if isinstance(given, str) else given

    def trained_models(self) -> list[str]:
        return [m for m in self.models if self.adopted(m) is None]

    def adopted_models(self, part: str = "final") -> list[str]:
        """Models whose `part` (final, init, epochs) the user gives (`final` includes pretrained)."""
        return [
            m
            for m in self.models
            if self.adopted(m) is not None
            and (part in self.adopted(m) or part == "final" and "pretrained" in self.adopted(m))
        ]

    def provides(self, model: str) -> set[str]:
        """What the runs of `model` have besides their final weights: `init` (initial weights)
        and `checkpoints` (weights after some epochs)."""
        if self.adopted(model) is None:
            return {"init"} | ({"checkpoints"} if self.epochs(model) else set())
        return {"init"} & set(self.adopted(model)) | ({"checkpoints"} if "epochs" in self.adopted(model) else set())

    def missing(self, model: str, need: str) -> str:
        """What to give for `need` of `model`, in words (for a one-line error)."""
        what = {"init": "the initial weights", "checkpoints": "weights of earlier epochs"}[need]
        if self.adopted(model) is None:
            return f"{what} of model {model!r}: set models.{model}.train.checkpoints (e.g. all)"
        part = {"init": "init", "checkpoints": "epochs"}[need]
        return f"{what} of model {model!r}, which is not trained here: give models.{model}.checkpoints.{part}"

    def checkpoint_files(self, model: str) -> dict[str, list[str]]:
        """The user's checkpoint files of `model`, per part, for every seed (none if trained here)."""
        given = self.adopted(model) or {}
        files = {part: [self._given(given[part], s) for s in self.seeds] for part in ("final", "init") if part in given}
        if "epochs" in given:
            files["epochs"] = [
                self._given(given["epochs"]["pattern"], s, e) for s in self.seeds for e in given["epochs"]["list"]
            ]
        return files

    @staticmethod
    def _given(pattern: str, seed: int | str, epoch: int | None = None) -> str:
        """One file of a checkpoints pattern (`knockout.paths`: ~ and $VARS expanded, relative to
        the working directory)."""
        return str(config_path(pattern.format(seed=seed, epoch=epoch)))

    def adopt_inputs(self, model: str, seed: int | str, part: str) -> list[str]:
        """The user's files that become `part` of results/models/{model}/seed{seed}/ (none for
        pretrained weights: torchvision's cache holds them)."""
        given = self.adopted(model)
        if part == "epochs":
            return [self._given(given["epochs"]["pattern"], seed, e) for e in given["epochs"]["list"]]
        return [self._given(given[part], seed)] if part in given else []

    def epochs(self, model: str) -> list[int]:
        """The epochs whose weights a run of `model` keeps (`epochs/epoch{e}.pt`)."""
        if self.adopted(model) is not None:
            return sorted(self.adopted(model).get("epochs", {}).get("list", []))
        train = self.config["models"][model]["train"]
        saved = train["checkpoints"]
        return list(range(1, train["epochs"] + 1)) if saved == "all" else sorted(saved)

    def train_settings(self, model: str, overrides: dict | None = None, checkpoints: bool = True) -> dict:
        """The model's training settings, resolved: `augment: auto` decided by the dataset,
        `checkpoints` as the list of epochs (none for retrained conditions)."""
        train = dict(self.config["models"][model]["train"]) | (overrides or {})
        if train["augment"] == "auto":
            train["augment"] = self.dataset_of(model) == "cifar10"  # random crops and flips suit CIFAR
        train["checkpoints"] = self.epochs(model) if checkpoints else []
        return train

    def _data_settings(self, model: str) -> dict:
        """What every job that reads `model`'s data gets (`DataSettings`): its preprocessing, how
        much of a split may stay in memory, the device."""
        return {
            "model": model,
            "preprocess": self._preprocess[model],
            "resident_mb": self.config["data"]["resident_mb"],
            "device": self.config["device"],
        }

    def readout(self, model: str) -> dict | None:
        """How `model`'s output is read as class logits (`knockout.readout`): its entry's `output`
        and `class_outputs`; None when both are the default."""
        entry = self.config["models"][model]
        given = {k: entry.get(k) for k in ("output", "class_outputs")}
        return given if any(v is not None for v in given.values()) else None

    def train_job(self, model: str) -> TrainSettings:
        """The settings a `train` job of `model` gets (the same for every seed)."""
        return TrainSettings(
            arch=self.config["models"][model]["arch"],
            train=self.train_settings(model),
            readout=self.readout(model),
            allow_chance=self.config["models"][model]["allow_chance"],
            **self._data_settings(model),
        )

    def adopt_job(self, model: str) -> AdoptSettings:
        """The settings an `adopt` job of `model` gets: the architecture the weights fit (with its
        pretrained weights for `pretrained`), the epochs they are of, how to read the files, the
        batch size to evaluate with, the accuracies the user measured and whether chance level is
        meant."""
        entry = self.config["models"][model]
        given = self.adopted(model)
        return AdoptSettings(
            arch=entry["arch"],
            epochs=self.epochs(model),
            eval_batch_size=entry["train"]["eval_batch_size"],
            pretrained=bool(given.get("pretrained")),
            accuracy={str(k): v for k, v in given.get("accuracy", {}).items()},
            allow_chance=entry["allow_chance"],
            checkpoint={k: given.get(k) for k in ("key", "prefix")},
            readout=self.readout(model),
            **self._data_settings(model),
        )

    def unit_stats_job(self, model: str) -> UnitsSettings:
        """The unit statistics' job: also each unit's importance in the layers a study ranks by it."""
        layers = set().union(*(s.type.importance_layers(s.spec) for s in self.studies.values() if s.model == model))
        return dataclasses.replace(
            self.unit_values_job(model), importance=sorted(layers) or None, budget_mb=self.config["budget_mb"]
        )

    def metrics(self) -> list[str]:
        return [f"{self.model_dir(m, s)}/metrics.json" for m in self.models for s in self.seeds]

    def histories(self) -> list[dict]:
        """The training histories (models trained here)."""
        return [
            {"model": m, "seed": s, "path": f"{self.model_dir(m, s)}/history.csv"}
            for m in self.trained_models()
            for s in self.seeds
        ]

    # --- studies ----------------------------------------------------------------------------------

    def study_job(self, name: str) -> StudySettings:
        """The resolved settings one job of study `name` gets (the same for every seed): its config
        entry, the device, the epochs it rewinds to and, for retraining, the training settings."""
        study = self.studies[name]
        units = self.unit_values_job(study.model)
        return StudySettings(
            name=name,
            # how many jobs and what the figures call things: not what each job computes
            study={k: v for k, v in study.entry.items() if k not in ("shards", "labels")},
            budget_mb=self.config["budget_mb"],
            epochs=self.epochs(study.model) if "checkpoints" in study.needs else None,
            # resample draws from the unit values' split and subset
            donors={"split": units.split, "examples": units.examples} if "donors" in study.needs else None,
            train=(
                self.train_settings(study.model, study.entry.get("train"), checkpoints=False)
                if study.job == "retrain"
                else None
            ),
            **self._data_settings(study.model),
        )

    def study_inputs(self, name: str, seed: int | str) -> dict[str, str]:
        """What a study's job reads for one seed: the trained network, what the study needs
        besides (initial weights, epoch checkpoints, unit statistics) and the data."""
        study = self.studies[name]
        folder = self.model_dir(study.model, seed)
        inputs = {"final": f"{folder}/final.pt"}
        if "init" in study.needs:
            inputs["init"] = f"{folder}/init.pt"
        if "checkpoints" in study.needs:
            inputs["epochs"] = f"{folder}/epochs"
        if "unit_stats" in study.needs:
            inputs["unit_stats"] = f"results/units/{study.model}/seed{seed}.csv"
        if "unit_values" in study.needs:
            inputs["unit_values"] = f"results/units/{study.model}/seed{seed}.values.pt"
        return inputs | self.data(study.model, train=study.job == "retrain" or "donors" in study.needs)

    def unit_values_job(self, model: str) -> UnitsSettings:
        """The unit values' job: the unit statistics' split and subset (never the evaluated images)."""
        settings = self.config["unit_stats"]
        return UnitsSettings(examples=settings["examples"], split=settings["split"], **self._data_settings(model))

    def unit_stats_inputs(self, model: str) -> dict[str, str]:
        return self.data(model, split=self.config["unit_stats"]["split"])

    def per_seed(self, name: str, suffix: str = TABLES["table"]) -> list[str]:
        """One of the files a study's jobs write per seed (`suffix`, of PER_SEED), for every seed."""
        model = self.studies[name].model
        return [f"results/interventions/{name}/{model}/seed{seed}{suffix}" for seed in self.seeds]

    # --- sharded studies (`knockout.shards`) -----------------------------------------------------

    def shard_dir(self, name: str, seed: int | str) -> str:
        return f"results/interventions/{name}/{self.studies[name].model}/shards/seed{seed}"

    def shard_files(self, name: str, seed: int | str, shards: int | None = None) -> list[str]:
        """The files the shards of a study write for one seed: `shards` of them (a study's
        `shards: N` when not given; `auto`: the count its plan.json says)."""
        study = self.studies[name]
        n = study.shards if shards is None else shards
        if not isinstance(n, int):
            raise ValueError(f"{name}: shards: {n}: the count is in its plan ({self.shard_plan(name, seed)})")
        return [f"{self.shard_dir(name, seed)}/shard{i}{SHARD_FILE[study.job]}" for i in range(n)]

    def shard_plan(self, name: str, seed: int | str) -> str:
        """`shards: auto`: the plan job's file (the chosen count and the cost it is based on)."""
        return f"{self.shard_dir(name, seed)}/plan.json"

    def shard_plan_job(self, name: str) -> StudySettings:
        """The settings of a study's `shard_plan` job: its study job's, with how long a shard
        should take and how many there may be."""
        return dataclasses.replace(
            self.study_job(name), shard_seconds=self.config["shard_seconds"], max_shards=self.config["max_shards"]
        )

    def runs(self, name: str, seed: int | str) -> list[str]:
        """The folders of a retraining study's trained conditions for one seed."""
        study = self.studies[name]
        return [f"results/interventions/{name}/{study.model}/runs/{slug(c)}/seed{seed}" for c in study.conditions]

    def run_files(self, name: str, seed: int | str) -> list[str]:
        """What `collect` reads of each trained condition."""
        return [
            f"{run}/{f}" for run in self.runs(name, seed) for f in ("condition.json", "metrics.json", "predictions.npz")
        ]

    def tables(self, name: str) -> dict[str, str]:
        return {"table": f"results/tables/{name}.csv", "comparisons": f"results/tables/{name}.comparisons.csv"}

    # --- analyses ---------------------------------------------------------------------------------

    @cached_property
    def analyses(self) -> list[str]:
        return ["baselines", *self.studies]

    def notebook(self, analysis: str) -> str:
        """The notebook (its name in notebooks/) that analyses `analysis`."""
        return "baselines" if analysis == "baselines" else self.studies[analysis].type.notebook

    def analysis(self, analysis: str) -> tuple[dict[str, str | list[str]], dict]:
        """(input files by name, papermill parameters) of one analysis notebook. The notebook reads
        exactly these files, which the parameters name; it is given the ones it declares."""
        out = {"out_dir": f"results/figures/{analysis}"}
        if analysis == "baselines":
            histories = self.histories()
            files = {
                "table": "results/tables/baselines.csv",
                "per_seed": "results/tables/baselines.per_seed.csv",
                "histories": [h["path"] for h in histories],
            }
            return files, out | {k: v for k, v in files.items() if k != "histories"} | {"histories": histories}
        study = self.studies[analysis]
        data = self.data(study.model, train=False)
        files: dict[str, str | list[str]] = {"per_seed": self.per_seed(analysis), "meta": data["meta"]}
        if study.type.aggregate:
            files |= self.tables(analysis)
        if study.job == "probe":
            files["arrays"] = self.per_seed(analysis, PER_SEED["probe"]["arrays"])
        else:
            files |= {
                "per_class": self.per_seed(analysis, TABLES["per_class"]),
                "confusion": self.per_seed(analysis, TABLES["confusion"]),
                "examples": self.per_seed(analysis, TABLES["examples"]),
                "test_images": data["test_images"],
                "test_indices": data["test_indices"],
            }
        parameters = out | {"study": analysis, "model": study.model, "study_type": study.type.name} | files
        parameters["labels"] = study.entry.get("labels", {})  # the study's display names
        parameters["units"] = []  # none given is none: never the notebook's own default
        if "unit_stats" in study.needs:  # class selectivity, for importance against selectivity
            units = [{"seed": s, "path": f"results/units/{study.model}/seed{s}.csv"} for s in self.seeds]
            files["units"] = [u["path"] for u in units]
            parameters["units"] = units
        if study.job == "retrain":
            runs = [
                {"condition": c, "seed": s, "history": f"{run}/history.csv", "record": f"{run}/condition.json"}
                for s in self.seeds
                for c, run in zip(study.conditions, self.runs(analysis, s))
            ]
            files |= {
                "baselines": "results/tables/baselines.csv",
                "runs": [r[k] for r in runs for k in ("history", "record")],
            }
            parameters |= {"baselines": files["baselines"], "runs": runs}
        return files, parameters

    # --- everything -------------------------------------------------------------------------------

    def targets(self) -> list[str]:
        """What `rule all` asks for: the trained models, the tables, provenance and every notebook
        (whose inputs pull in the rest)."""
        tables = []
        for name, study in self.studies.items():
            tables += list(self.tables(name).values()) if study.type.aggregate else self.per_seed(name)
        notebooks = [f"results/notebooks/{a}.ipynb" for a in self.analyses]
        return self.metrics() + ["results/tables/baselines.csv", "results/provenance.json", *tables, *notebooks]
