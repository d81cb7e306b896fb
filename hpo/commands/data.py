"""`hpo data check|download`: the CIFAR-10 folder."""

from __future__ import annotations

from typing import Annotated

import typer

from hpo.commands.options import DataDirOpt, FormatOpt, OutputFormat, echo_record

data_app = typer.Typer(no_args_is_help=True, help="Fetch and check the CIFAR-10 folder.")


@data_app.command("check")
def data_check(data_dir: DataDirOpt = None, format: FormatOpt = OutputFormat.table) -> None:
    """Validate the CIFAR-10 folder (shapes, dtypes, labels; not md5) and print its class counts."""
    from cifarnet.data import load_cifar10, resolve_data_dir

    data = load_cifar10(data_dir)
    record = {"folder": str(resolve_data_dir(data_dir)), **{
        name: {"images": len(part), "per_class": part.labels.bincount(minlength=10).tolist()}
        for name, part in (("train", data.train), ("test", data.test))}}
    table = [f"{name}: {record[name]['images']:,} images, per class {record[name]['per_class']}"
             for name in ("train", "test")]
    echo_record(record, format, "\n".join([*table, f"ok: {record['folder']}"]))


@data_app.command("download")
def data_download(
    data_dir: Annotated[str, typer.Option("--data-dir", help="Where to put cifar-10-batches-py/.")] = "data",
) -> None:
    """Fetch CIFAR-10 with torchvision (needs internet); skipped when the folder is already valid."""
    from cifarnet.data import load_cifar10, resolve_data_dir

    load_cifar10(data_dir, download=True)
    typer.echo(f"ok: {resolve_data_dir(data_dir)} (use --data-dir {data_dir} or CIFAR10_DIR={data_dir})")
