"""The architecture diagram of a run, drawn from its actual networks: layers, tensor shapes, critics, compose.

Each network of the run is traced with forward hooks on a dummy input, so every box is a
module that exists in the saved model, with the shape it really outputs. Below the
networks, the compose pipeline from an expression to a refined, ranked image. Writes a PNG
and an SVG (text kept as text, so the SVG is searchable).

Example: ``python -m autoencoder.diagram --run outputs/runs/cpu-main --out outputs/report/cpu-main``
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from autoencoder.atomic import replace_atomically
from autoencoder.cli import (CONFIG_FILE, ConfigError, check_writable, command, load_config, refuse_link_or_file,
                            save_config)
from autoencoder.models import ModelConfig, Networks, ResBlock, build_networks
from autoencoder.run_folder import RunConfig, RunError, load_run_config

NETWORK_TITLES = {"latent_critic": "Latent critic L (AAE)", "encoder": "Encoder E", "decoder": "Decoder G",
                  "image_critic": "Image critic D", "interp_critic": "Interpolation critic C (ACAI)"}
FLOWS = [("encoder", "latent_critic", "z"), ("encoder", "decoder", "z"), ("decoder", "image_critic", "G(z)"),
         ("decoder", "interp_critic", "G(alpha z1 + (1-alpha) z2)")]  # (from, to, what travels)
NETWORK_ROLES = {
    "encoder": "x (3,32,32) -> z",
    "decoder": "z -> x' in [-1,1]",
    "image_critic": "real x vs G(z); spectral norm;\nsteers z at compose time",
    "interp_critic": "regresses alpha of G(alpha z1+(1-alpha) z2)",
    "latent_critic": "z ~ N(0, I) vs E(x)",
}
COMPOSE_STEPS = [
    ("expression", "'pegasus', 'horse+wings',\n'horse&airplane@top'\nlark grammar -> terms, regions"),
    ("codes", "z0 from the latent prior\n(rectified flow, guided): a learned\nlabel, or a class per region"),
    ("project", "edits of real codes\n(horse + s * wing direction):\nSDEdit back through the prior"),
    ("refine", "z <- z - eta * grad E(z)\nE = -D(G(z)) + |z - z0|^2 / 2\n+ pull to the prior (DDLS)"),
    ("rank", "intent gate first, then\nz-scores: realism, intent,\nsharpness, uniqueness"),
    ("write", "showcase.png, batch64.png,\nneighbours.png, scores.json"),
]


@dataclass
class LossWeights:
    """The loss terms a run was trained with, as its config.json records them (the diagram's caption reads these;
    it draws a run, and does not need the training's own config)."""
    perceptual_weight: float = 0.0  # weight of the perceptual loss
    class_weight: float = 0.0  # weight of the class head
    spectral_weight: float = 0.0  # weight of the spectral loss
    latent_weight: float = 0.0  # weight of the latent critic (AAE)
    interp_weight: float = 0.0  # weight of the interpolation critic (ACAI)
    image_weight: float = 0.0  # weight of the image critic (GAN)
    init_from: str = ""  # the run whose weights it started from
    train_encoder: bool = True  # the encoder was trained (false: only the decoder was fine-tuned)


def loss_line(model, weights: LossWeights) -> str:
    """The code's shape (of ``model``, a run's config) and the weighted loss terms of a run, for the diagram's
    caption."""
    code_shape = ModelConfig.of(model).code_shape
    shape = " x ".join(str(n) for n in code_shape) if len(code_shape) > 1 else f"{code_shape[0]}-d"
    terms = ["MSE"]
    if weights.perceptual_weight:
        terms.append(f"{weights.perceptual_weight:g} perceptual")
    if weights.class_weight:
        terms.append(f"{weights.class_weight:g} class head (linear z -> 10)")
    if weights.spectral_weight:
        terms.append(f"{weights.spectral_weight:g} spectral")
    terms += [f"{weight:g} {name}" for weight, name in
              ((weights.latent_weight, "AAE"), (weights.interp_weight, "ACAI"), (weights.image_weight, "GAN")) if weight]
    line = f"code {shape}; losses: " + " + ".join(terms)
    if weights.init_from and not weights.train_encoder:
        line += f"\n(the decoder fine-tuned from {weights.init_from}, its encoder frozen)"
    return line


@dataclass
class Layer:
    network: str  # attribute name in Networks, e.g. "encoder"
    name: str  # qualified module name inside that network, e.g. "net.3"
    label: str  # what the box says, e.g. "Conv 32->64 4x4 /2"
    shape: tuple[int, ...]  # output shape without the batch dimension


def _is_unit(module: nn.Module) -> bool:
    """A box of the diagram: a residual block, or a module with no children but its parametrizations."""
    if isinstance(module, ResBlock):
        return True
    return all(name == "parametrizations" for name, _ in module.named_children())


def _label(module: nn.Module) -> str:
    spectral = "SN-" if hasattr(module, "parametrizations") else ""
    if isinstance(module, nn.Conv2d):
        k, s = module.kernel_size[0], module.stride[0]
        return f"{spectral}Conv {module.in_channels}->{module.out_channels} {k}x{k}" + (f" /{s}" if s > 1 else "")
    if isinstance(module, nn.Linear):
        return f"{spectral}Linear {module.in_features}->{module.out_features}"
    if isinstance(module, ResBlock):
        channels = module.body[1].in_channels
        return f"ResBlock {channels} (2x Conv 3x3)"
    if isinstance(module, nn.Upsample):
        return f"Upsample x{int(module.scale_factor)} ({module.mode})"
    if isinstance(module, nn.LeakyReLU):
        return f"LeakyReLU {module.negative_slope:g}"
    return type(module).__name__


def trace_layers(networks: Networks, config: RunConfig) -> list[Layer]:
    """Every unit module of every network, in call order, with its output shape."""
    inputs = {"encoder": torch.zeros(1, 3, 32, 32), "decoder": torch.zeros(1, config.latent_dim),
              "image_critic": torch.zeros(1, 3, 32, 32), "interp_critic": torch.zeros(1, 3, 32, 32),
              "latent_critic": torch.zeros(1, config.latent_dim)}
    layers: list[Layer] = []
    for network_name, x in inputs.items():
        network = getattr(networks, network_name)
        inside = [other for other, o in network.named_modules() if other and isinstance(o, ResBlock)]
        units = {m: name for name, m in network.named_modules() if name and _is_unit(m)
                 and ".parametrizations" not in name and not name.startswith("parametrizations")
                 and not any(name.startswith(other + ".") for other in inside)}
        hooks = [m.register_forward_hook(
            lambda m, _inp, out, nn_=network_name: layers.append(
                Layer(nn_, units[m], _label(m), tuple(out.shape[1:])))) for m in units]
        was_training = network.training
        network.eval()
        with torch.no_grad():
            network(x)
        network.train(was_training)
        for h in hooks:
            h.remove()
    return layers


def _shape_text(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(str(s) for s in shape) + ")"


def draw_figure(layers: list[Layer], config: RunConfig, weights: LossWeights, parameters: dict[str, int],
                out_stem: Path, title: str = "") -> list[Path]:
    """Draw the networks' columns and the compose pipeline; writes ``out_stem``.png and .svg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    order = list(NETWORK_TITLES)
    columns = {n: [layer for layer in layers if layer.network == n] for n in order}
    rows = max(len(c) for c in columns.values())
    row_h, col_w, gap = 0.42, 3.3, 0.45
    net_h = rows * row_h + 2.4
    compose_h = 2.6
    width = len(order) * (col_w + gap) + gap
    height = net_h + compose_h + (0.8 if title else 0.3)
    with plt.rc_context({"svg.fonttype": "none", "font.family": "DejaVu Sans"}):
        fig = plt.figure(figsize=(width, height))
        ax = fig.add_axes([0, 0, 1, 1])
        ax.set_xlim(0, width)
        ax.set_ylim(0, height)
        ax.axis("off")
        top = height - (0.8 if title else 0.3) - 0.8
        centres = {n: gap + i * (col_w + gap) + col_w / 2 for i, n in enumerate(order)}
        for source, target, what in FLOWS:  # data flow between the networks, above the columns
            adjacent = abs(order.index(source) - order.index(target)) == 1
            direction = 1 if centres[target] > centres[source] else -1
            start = (centres[source] + direction * (0.1 if not adjacent else col_w / 2 - 0.2), top + 0.15)
            end = (centres[target] - direction * (0.1 if not adjacent else col_w / 2 - 0.2), top + 0.15)
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color="#1f4e79",
                                         connectionstyle="arc3,rad=0" if adjacent else "arc3,rad=-0.12"))
            ax.text((start[0] + end[0]) / 2, top + (0.32 if adjacent else 0.62), what, ha="center",
                    va="bottom", fontsize=9, color="#1f4e79", style="italic")
        if title:
            ax.text(width / 2, height - 0.4, title, ha="center", va="center", fontsize=15, weight="bold")
        colours = {"encoder": "#dbe9f6", "decoder": "#dff2df", "image_critic": "#fbe3d6",
                   "interp_critic": "#fbe3d6", "latent_critic": "#efe3f7"}
        for c, name in enumerate(order):
            x0 = gap + c * (col_w + gap)
            ax.text(x0 + col_w / 2, top - 0.25, NETWORK_TITLES[name], ha="center", va="center",
                    fontsize=12, weight="bold")
            ax.text(x0 + col_w / 2, top - 0.75, f"{NETWORK_ROLES[name]}\n{parameters[name]:,} parameters",
                    ha="center", va="center", fontsize=8.5, color="#333333")
            for r, layer in enumerate(columns[name]):
                y = top - 1.45 - r * row_h
                ax.add_patch(FancyBboxPatch((x0, y - row_h * 0.8), col_w, row_h * 0.8,
                                            boxstyle="round,pad=0.0,rounding_size=0.06",
                                            facecolor=colours[name], edgecolor="#555555", linewidth=0.8))
                ax.text(x0 + 0.08, y - row_h * 0.4, layer.label, ha="left", va="center", fontsize=8.5)
                ax.text(x0 + col_w - 0.08, y - row_h * 0.4, _shape_text(layer.shape), ha="right",
                        va="center", fontsize=8, color="#444444", family="DejaVu Sans Mono")
        # the compose pipeline along the bottom
        ax.text(gap, compose_h - 0.15, "Compose pipeline (latent_ops.compose)", ha="left", va="center",
                fontsize=12, weight="bold")
        step_w = (width - gap * (len(COMPOSE_STEPS) + 1)) / len(COMPOSE_STEPS)
        for i, (name, text) in enumerate(COMPOSE_STEPS):
            x0 = gap + i * (step_w + gap)
            ax.add_patch(FancyBboxPatch((x0, 0.3), step_w, compose_h - 0.8,
                                        boxstyle="round,pad=0.0,rounding_size=0.1",
                                        facecolor="#fff6d5", edgecolor="#555555", linewidth=0.8))
            ax.text(x0 + step_w / 2, compose_h - 0.75, name, ha="center", va="center", fontsize=10.5,
                    weight="bold")
            ax.text(x0 + step_w / 2, (compose_h - 0.5) / 2 + 0.05, text, ha="center", va="center", fontsize=8.5)
            if i:
                ax.add_patch(FancyArrowPatch((x0 - gap + 0.04, compose_h / 2 - 0.1), (x0 - 0.04, compose_h / 2 - 0.1),
                                             arrowstyle="-|>", mutation_scale=12, color="#333333"))
        ax.text(width - gap, compose_h - 0.15,
                loss_line(config, weights), ha="right", va="center", fontsize=9, color="#333333")
        out_stem.parent.mkdir(parents=True, exist_ok=True)
        files = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg")]
        replace_atomically(lambda tmp: fig.savefig(tmp, dpi=110, format="png"), files[0])
        replace_atomically(lambda tmp: fig.savefig(tmp, format="svg"), files[1])
        plt.close(fig)
    return files


def draw_run(run: str | Path, out: str | Path = "") -> tuple[list[Path], list[Layer]]:
    """Trace the run's networks (rebuilt from its config) and draw them into ``out``/architecture.*."""
    run = Path(run)
    if not (run / CONFIG_FILE).exists():
        raise RunError(f"{run / CONFIG_FILE} is missing: {run} is not a run folder")
    config = load_run_config(run)
    weights = load_config(run / CONFIG_FILE, LossWeights)
    networks = build_networks(config)  # shapes and layers only depend on the config, not the weights
    layers = trace_layers(networks, config)
    parameters = {n: sum(p.numel() for p in getattr(networks, n).parameters()) for n in NETWORK_TITLES}
    out_dir = Path(out) if out else Path("outputs/report") / run.name
    title = f"pegasus: adversarially regularised autoencoder of run {run.name}"
    return draw_figure(layers, config, weights, parameters, out_dir / "architecture", title), layers


DRAWN_FILES = ("architecture.png", "architecture.svg")
OWNERS = ("diagram-config.json", "report.json")  # beside a drawing this command or the report made


@dataclass
class DiagramConfig:
    run: str = ""  # the run folder to draw (required)
    out: str = ""  # folder of architecture.png/.svg; empty: outputs/report/<run>


def draw_command(config: DiagramConfig) -> tuple[list[Path], list[Layer]]:
    if not config.run:
        raise ConfigError("--run is required: the run folder whose networks to draw")
    out = Path(config.out) if config.out else Path("outputs/report") / Path(config.run).name
    refuse_link_or_file(out, "the drawing is never written through a link")
    theirs = [f for f in DRAWN_FILES if (out / f).exists() and not any((out / o).is_file() for o in OWNERS)]
    if theirs:  # a drawing this command (or the report, which draws the same) did not make is never replaced
        raise ConfigError(f"--out {out} holds {theirs[0]}, which neither this command nor latent_ops.report wrote "
                          f"(no {' or '.join(OWNERS)} beside it); nothing was written: pass another --out")
    check_writable(out)
    files, layers = draw_run(config.run, out)
    save_config(config, out / "diagram-config.json")
    return files, layers


def main(run: str = "", **flags) -> None:
    """Write architecture.png and architecture.svg for RUN (default folder: outputs/report/<run>); every field of
    DiagramConfig is a flag."""
    files, layers = command(DiagramConfig, dict(flags, run=run), draw_command)
    print(f"{len(layers)} layers drawn -> {files[0]} and {files[1]}")


if __name__ == "__main__":
    from autoencoder.cli import fire_command

    fire_command(main)
