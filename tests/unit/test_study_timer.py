"""Study timers on a real apscheduler: a release that lands while the study's check runs is not lost."""
from __future__ import annotations

import shutil
import threading
import time

import pydicom
from apscheduler.schedulers.background import BackgroundScheduler

from node.index import Index
from node.jobs import JobQueue
from node.readiness import ReadinessPolicy
from node.spool import Spool
from node.studies import StudyAssembler
from pipeline.phases import PhaseRules
from tests.support.ctdata import SeriesSpec, uid, write_series


def test_a_release_during_the_check_still_gets_the_study_checked(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    index = Index(data / "index.sqlite")
    spool = Spool(data, index, 0)
    study = uid("timer")
    for f in write_series(tmp_path / "s", study, SeriesSpec("AP", 3), rows=16, cols=16):
        temp = spool.incoming / f.name
        shutil.copy(f, temp)
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        spool.store(temp, command_sop_class=ds.SOPClassUID, command_sop_instance=ds.SOPInstanceUID,
                    assoc_id="A", calling_aet="SCU")
    scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"max_instances": 1})  # as node.daemon
    scheduler.start()
    try:
        policy = ReadinessPolicy(quiet_period_s=3600, max_wait_s=7200, required_phases=frozenset())
        assembler = StudyAssembler(index, JobQueue(index), scheduler, policy, PhaseRules())
        arm = assembler._arm
        released = threading.Event()

        def arm_then_release(study_uid, when):
            arm(study_uid, when)
            if threading.current_thread() is not threading.main_thread() and not released.is_set():
                # check() found the study not ready (association A still open) and re-armed; A is
                # released now, on its own thread, before check() returns.
                released.set()
                t = threading.Thread(target=assembler.association_released, args=("A", {study}))
                t.start()
                t.join()
                time.sleep(0.5)  # check() still finishing

        assembler._arm = arm_then_release
        assembler._arm(study, time.time())  # the study's timer fires now
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and index.scalar("SELECT COUNT(*) FROM jobs") == 0:
            time.sleep(0.1)
        assert released.is_set()
        assert index.scalar("SELECT COUNT(*) FROM jobs WHERE study_uid=?", (study,)) == 1
        assert index.scalar("SELECT state FROM studies WHERE study_uid=?", (study,)) != "receiving"
    finally:
        scheduler.shutdown(wait=False)
        index.close()
