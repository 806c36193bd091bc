"""`photobg launch`: `accelerate launch`, with the options it takes, ending as one photobg process ends.

    photobg launch --multi_gpu --num_processes 8 -m photobg generate photos/ --prompt "..." --output-dir out/

Under `accelerate launch` the launcher's own process (torch's elastic agent) runs none of photobg. When the
processes end with status 1 (a photo was skipped, and they said so) it adds torch's `ChildFailedError` traceback,
and on Ctrl-C, after every process has stopped cleanly with status 130, its own `SignalException` traceback; it
exits 1 either way. `photobg launch` runs the same launcher in this process and ends with the processes' own
status and lines instead: 1 after a failure they reported, 130 after Ctrl-C, no traceback of the launcher's.
"""

import sys

HELP = "accelerate launch with a process's endings: exit status 130 on Ctrl-C, the processes' own status otherwise"


def run(argv):
    """Launch as `accelerate launch ARGV` would; returns the exit status.

    Args:
        argv: `accelerate launch`'s arguments: its options, then the script (or `-m MODULE`) and the script's own.
    """
    import logging

    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    parser = launch_command_parser()
    parser.prog = "photobg launch"
    args = parser.parse_args(argv)
    # The agent logs each signal it passes on and each failed process as warnings; the processes say it better.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
    try:
        launch_command(args)
    except SignalException as stop:  # Ctrl-C (SIGINT) or a scheduler's SIGTERM: the processes have stopped
        return 128 + int(stop.sigval)
    except KeyboardInterrupt:  # one process (`simple_launcher`): Ctrl-C reaches the launcher as usual
        return 130
    except ChildFailedError as failed:
        status = failed.failures[min(failed.failures)].exitcode  # the first process's, as one process's would be
        return 128 - status if status < 0 else status or 1  # killed by signal N: 128 + N, as a shell says
    return 0


def main(argv=None):
    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
