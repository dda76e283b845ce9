"""Render a kustomization offline, as `kustomize build` does, for the subset deploy/k8s uses."""

# Supported: `resources` (files and kustomization folders), `namespace`, `images` and `patches`
# holding strategic-merge patches (by file or inline, optionally with a `target`). Anything else
# raises RenderError instead of being ignored, so a rendering never differs silently from what
# kustomize would apply. Used by tests/unit/test_deploy_files.py (and by hand:
# `python -m deploy.kustomize_render deploy/k8s/overlays/cpu`).

from __future__ import annotations

import copy
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
}
# Kinds whose namespace handling in kustomize goes beyond metadata.namespace (not supported).
NAMESPACE_REFERENCING = {
    "ClusterRoleBinding",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
}
# Strategic-merge keys of the lists deploy/k8s patches (k8s.io/api patchMergeKey); other lists
# are replaced whole, as they are for fields without a merge strategy (args, tolerations, ...).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
}

Resource = dict[str, Any]


class RenderError(ValueError):
    """The kustomization uses something this renderer does not do, or is inconsistent."""


def resource_id(res: Resource) -> tuple[str, str, str, str]:
    """(apiVersion group, kind, namespace, name): what kustomize keys a resource by."""
    group = str(res.get("apiVersion", "")).rpartition("/")[0]
    meta = res.get("metadata") or {}
    return group, str(res.get("kind", "")), str(meta.get("namespace", "")), str(meta.get("name", ""))


def load_documents(path: Path) -> list[Resource]:
    """The non-empty YAML documents of one file."""
    with path.open(encoding="utf-8") as fh:
        docs = [doc for doc in yaml.safe_load_all(fh) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise RenderError(f"{path}: every document must be a resource with apiVersion and kind")
    return docs


def kustomization_file(folder: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            return folder / name
    raise RenderError(f"{folder}: no kustomization.yaml")


def render(folder: str | Path) -> list[Resource]:
    """The resources `kustomize build folder` would print (in kustomization order)."""
    folder = Path(folder)
    kfile = kustomization_file(folder)
    with kfile.open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh) or {}
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: fields not supported by this renderer: {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != "Kustomization":
        raise RenderError(f"{kfile}: kind must be Kustomization")

    resources: list[Resource] = []
    for entry in spec.get("resources") or []:
        target = (folder / str(entry)).resolve()
        if target.is_dir():
            resources.extend(render(target))
        elif target.is_file():
            resources.extend(load_documents(target))
        else:
            raise RenderError(f"{kfile}: resource {entry!r} does not exist (remote ones not supported)")
    _check_unique(resources, kfile)

    for patch_entry in spec.get("patches") or []:
        for patch in _patch_documents(patch_entry, folder, kfile):
            _apply_patch(resources, patch, patch_entry.get("target"), kfile)
    if spec.get("namespace"):
        _set_namespace(resources, str(spec["namespace"]))
        _check_unique(resources, kfile)
    for image in spec.get("images") or []:
        _set_image(resources, image, kfile)
    return resources


def _check_unique(resources: Iterable[Resource], where: Path) -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for res in resources:
        rid = resource_id(res)
        if rid in seen:
            raise RenderError(f"{where}: resource {rid} is defined twice")
        seen.add(rid)


def _patch_documents(entry: Any, folder: Path, kfile: Path) -> list[Resource]:
    if not isinstance(entry, dict) or set(entry) - {"path", "patch", "target"}:
        raise RenderError(f"{kfile}: a patch has path or patch, and optionally target: {entry!r}")
    if "path" in entry:
        docs: list[Any] = load_documents(folder / str(entry["path"]))
    elif "patch" in entry:
        docs = [doc for doc in yaml.safe_load_all(str(entry["patch"])) if doc is not None]
    else:
        raise RenderError(f"{kfile}: a patch needs path or patch")
    for doc in docs:
        if not isinstance(doc, dict):
            raise RenderError(f"{kfile}: JSON 6902 (list) patches are not supported")
    return docs


def _matches(res: Resource, patch: Resource, target: dict[str, Any] | None) -> bool:
    if target:
        unknown = set(target) - {"kind", "name", "group", "version", "namespace"}
        if unknown:
            raise RenderError(f"patch target fields not supported: {sorted(unknown)}")
        group, _, version = str(res.get("apiVersion", "")).rpartition("/")
        actual = {
            "kind": res.get("kind"),
            "name": res["metadata"].get("name"),
            "group": group,
            "version": version,
            "namespace": res["metadata"].get("namespace", ""),
        }
        return all(str(actual[key]) == str(value) for key, value in target.items())
    return res.get("kind") == patch.get("kind") and res["metadata"].get("name") == (
        patch.get("metadata") or {}
    ).get("name")


def _apply_patch(
    resources: list[Resource], patch: Resource, target: dict[str, Any] | None, kfile: Path
) -> None:
    hits = [i for i, res in enumerate(resources) if _matches(res, patch, target)]
    if not hits:
        raise RenderError(
            f"{kfile}: patch for {patch.get('kind')}/{patch.get('metadata')} matches no resource"
        )
    for i in hits:
        body = copy.deepcopy(patch)
        if target:  # a targeted patch may name any resource; its own identity is not applied
            body.pop("metadata", None)
            body.pop("kind", None)
            body.pop("apiVersion", None)
        resources[i] = strategic_merge(resources[i], body)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """Merge `patch` into `base` as a Kubernetes strategic-merge patch does (subset)."""
    if isinstance(patch, dict) and isinstance(base, dict):
        for key in patch:
            if str(key).startswith("$"):
                raise RenderError(f"patch directive {key!r} is not supported")
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value, str(key))
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(patch, list) and isinstance(base, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = copy.deepcopy(base)
        index = {item.get(key): n for n, item in enumerate(merged_list) if isinstance(item, dict)}
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise RenderError(f"every item patched into {field!r} needs {key!r}")
            if item[key] in index:
                n = index[item[key]]
                merged_list[n] = strategic_merge(merged_list[n], item, "")
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _set_namespace(resources: list[Resource], namespace: str) -> None:
    for res in resources:
        kind = str(res.get("kind"))
        if kind in NAMESPACE_REFERENCING:
            raise RenderError(f"namespace transformer for {kind} is not supported")
        if kind not in CLUSTER_SCOPED:
            res.setdefault("metadata", {})["namespace"] = namespace
        if kind == "RoleBinding":
            # kustomize moves ServiceAccount subjects along (those naming no other namespace)
            for subject in res.get("subjects") or []:
                if (
                    subject.get("kind") == "ServiceAccount"
                    and subject.get("namespace", "default") == "default"
                ):
                    subject["namespace"] = namespace


def split_image(image: str) -> tuple[str, str, str]:
    """("name", "tag", "digest") of an image reference; a registry port is part of the name."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest


def pod_specs(res: Resource) -> list[dict[str, Any]]:
    """The pod specs inside a workload resource (Pod, Deployment, StatefulSet, Job, CronJob...)."""
    kind = res.get("kind")
    spec = res.get("spec") or {}
    if kind == "Pod":
        return [spec]
    if kind == "CronJob":
        return [spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec", {})]
    if "template" in spec and isinstance(spec["template"], dict):
        return [spec["template"].get("spec") or {}]
    return []


def containers(res: Resource) -> list[dict[str, Any]]:
    """Every container and init container of a workload resource."""
    found: list[dict[str, Any]] = []
    for pod in pod_specs(res):
        found.extend(pod.get("initContainers") or [])
        found.extend(pod.get("containers") or [])
    return found


def _set_image(resources: list[Resource], image: dict[str, Any], kfile: Path) -> None:
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown or "name" not in image:
        raise RenderError(f"{kfile}: images entry not supported: {image!r}")
    for res in resources:
        for container in containers(res):
            name, tag, digest = split_image(str(container.get("image", "")))
            if name != image["name"]:
                continue
            name = str(image.get("newName", name))
            if "digest" in image:
                container["image"] = f"{name}@{image['digest']}"
                continue
            tag = str(image.get("newTag", tag))
            ref = f"{name}:{tag}" if tag else name
            container["image"] = f"{ref}@{digest}" if digest and "newTag" not in image else ref


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m deploy.kustomize_render KUSTOMIZATION_FOLDER", file=sys.stderr)
        return 2
    try:
        resources = render(argv[0])
    except RenderError as exc:
        print(f"kustomize_render: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(resources, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
