"""`hpo data check|download`: the CIFAR-10 folder."""

from __future__ import annotations

from typing import Annotated

import typer

from hpo.commands.options import DataDirOpt

data_app = typer.Typer(no_args_is_help=True, help="Fetch and check the CIFAR-10 folder.")


@data_app.command("check")
def data_check(data_dir: DataDirOpt = None) -> None:
    """Validate the CIFAR-10 folder (shapes, dtypes, labels; not md5) and print its class counts."""
    from cifarnet.data import load_cifar10, resolve_data_dir

    data = load_cifar10(data_dir)
    for name, part in (("train", data.train), ("test", data.test)):
        counts = part.labels.bincount(minlength=10).tolist()
        typer.echo(f"{name}: {len(part):,} images, per class {counts}")
    typer.echo(f"ok: {resolve_data_dir(data_dir)}")


@data_app.command("download")
def data_download(
    data_dir: Annotated[str, typer.Option("--data-dir", help="Where to put cifar-10-batches-py/.")] = "data",
) -> None:
    """Fetch CIFAR-10 with torchvision (needs internet); skipped when the folder is already valid."""
    from cifarnet.data import load_cifar10, resolve_data_dir

    load_cifar10(data_dir, download=True)
    typer.echo(f"ok: {resolve_data_dir(data_dir)} (use --data-dir {data_dir} or CIFAR10_DIR={data_dir})")
