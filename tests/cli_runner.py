"""The command line run in-process for the tests."""
from mud_iknn import cli


def run(capsys, *argv):
    """(exit status, stdout, stderr) of ``mud-iknn argv``; argparse's SystemExit becomes a status."""
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err
