"""Agents on the Hugging Face hub. An agent folder (`save_pretrained`) is already a hub repository's
content (safetensors, config.json, tokenizer); `load_agent("org/name")` reads one through
huggingface_hub's cache (`snapshot_download`, which honours HF_HUB_OFFLINE, HF_HUB_CACHE and HF_TOKEN),
and `push_to_hub` uploads a folder in one commit with a generated model card (README.md).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vla_agents.atomic import complete_folder

# owner/name as the hub spells repository ids (huggingface_hub.utils.validate_repo_id's characters)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
NOT_UPLOADED = ("checkpoint/*", ".*", "*/.*")  # the training checkpoint, unfinished writes


def looks_like_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and ".." not in text and not text.endswith(".git")


def download_agent(repo_id: str, revision: str | None = None) -> Path:
    """The cached snapshot of `repo_id` at `revision` (default: main), downloaded first when online."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    shown = f"{repo_id!r} (revision {revision or 'main'})"
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except RevisionNotFoundError as e:
        raise FileNotFoundError(f"hub repository {repo_id!r} has no revision {revision!r}; expected a branch, tag or "
                                "commit of it") from e
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(f"{repo_id!r} is neither an agent folder here nor a hub repository you can read "
                                "(for a private one, log in: hf auth login)") from e
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub could not be reached"
        raise FileNotFoundError(f"{shown} is neither an agent folder here nor in the Hugging Face cache "
                                f"({constants.HF_HUB_CACHE}), and {why}: download it once online "
                                f"(hf download {repo_id}), or give the path of an agent folder") from e


def model_card(folder: Path, repo_id: str) -> str:
    """README.md for the hub: what the agent is (policy, recipe), what it was trained on (config.json's
    `training`, written by train bc) and how it did (`eval_info.json` in the folder, when present)."""
    from huggingface_hub import ModelCard, ModelCardData

    config = json.loads((folder / "config.json").read_text())
    recipe, training = config.get("recipe", {}), config.get("training") or {}
    name = f"{config['policy']}-{config.get('scale', recipe.get('scale'))}"
    data = ModelCardData(library_name="vla-agents", license="mit", tags=["robotics", "vision-language-action",
                                                                           "vla-agents", config["policy"]])
    lines = [f"# {repo_id}", "",
             f"A `{name}` agent of `vla-agents`: a Vision-Language-Action "
             f"policy that acts in Gymnasium environments through the `{config.get('adapter')}` adapter.", "",
             "```python", "from vla_agents import load_agent", "",
             f'agent = load_agent("{repo_id}")', "action = agent.act(observation)  # one step; reset() between episodes",
             "```", "", "## Policy", "",
             f"- policy: `{config['policy']}`, recipe scale `{config.get('scale')}`, action chunk {config.get('chunk')}, "
             f"action dimension {config.get('action_dim')}"]
    if config.get("overrides"):
        lines.append(f"- recipe overrides: `{json.dumps(config['overrides'])}`")
    if config.get("lora"):
        lines.append(f"- LoRA rank {config['lora']['rank']}, alpha {config['lora']['alpha']}")
    lines += ["", "## Training", ""]
    if training:
        lines += [f"- demonstrations: {', '.join(f'`{d}`' for d in training.get('data', []))}",
                  *(f"- {key.replace('_', ' ')}: {training[key]}" for key in ("steps", "batch_size", "processes", "lr", "seed")
                    if key in training)]
    else:
        lines.append("Not recorded in config.json (an agent saved outside `vla-agents train bc`).")
    lines += ["", "## Evaluation", ""]
    info = folder / "eval_info.json"
    if info.is_file():
        evaluation: dict[str, Any] = json.loads(info.read_text())
        lines += ["| task | success (%) | episodes |", "| --- | --- | --- |"]
        lines += [f"| {t['task_id']} | {t['metrics']['pc_success']:.1f} | {t['metrics']['n_episodes']} |"
                  for t in evaluation.get("per_task", [])]
        overall = evaluation.get("overall", {})
        if overall:
            lines.append(f"| **overall** | **{overall['pc_success']:.1f}** | {overall['n_episodes']} |")
    else:
        lines.append("No evaluation in this folder (`vla-agents eval --json AGENT/eval_info.json` writes one).")
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"))


def push_to_hub(folder: str | Path, repo_id: str, *, revision: str | None = None, private: bool | None = None,
                commit_message: str | None = None, api: Any = None) -> str:
    """Upload the agent folder (not its training checkpoint) and its model card to `repo_id` in one
    commit, creating the repository if needed; returns the commit's URL. `api`: the
    `huggingface_hub.HfApi` to send with (its endpoint and token); default HfApi()."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import filter_repo_objects

    folder = complete_folder(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an agent folder (no config.json); expected a folder written by "
                                "save_pretrained or vla-agents train")
    if not looks_like_hub_id(repo_id):
        raise ValueError(f"{repo_id!r} is not a hub repository id; expected owner/name")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    uploaded = [f for f in filter_repo_objects(files, ignore_patterns=list(NOT_UPLOADED)) if f != "README.md"]
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in uploaded]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=model_card(folder, repo_id).encode()))
    api = api or HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.create_commit(repo_id, operations, commit_message=commit_message or f"Upload {folder.name} with vla-agents",
                               revision=revision)
    return commit.commit_url
