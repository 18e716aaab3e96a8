// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Multicall} from "@openzeppelin/contracts/utils/Multicall.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {LicenseRegistry} from "./LicenseRegistry.sol";
import {OracleRegistry} from "./OracleRegistry.sol";

/// @title JobEscrow
/// @notice Escrow for licensed edge compute. Admitted CSPs fund jobs; once per epoch a quorum of
/// oracles posts a signed report: two Merkle roots, one of each (job, license)'s cumulative node
/// pay and one of each job's cumulative totals (released to nodes, refunded to the CSP, burned).
/// Posting costs the same whatever the number of jobs: a job's totals are applied to its accounts
/// only when someone proves them (`applyTotals`, usually batched with a claim, refund, burn or
/// close through `multicall`). License owners claim with proofs, CSPs take refunds, burns are
/// executed; all whenever anyone likes.
/// @dev Per job, at every moment:
///   deposited = released + forfeited + refunded + burned + reclaimed      (moved out)
///             + (allocRelease - released - forfeited)                       (claimable)
///             + (allocRefund - refunded) + (allocBurn - burned)             (pending)
///             + (deposited - reclaimed - allocRelease - allocRefund - allocBurn)   (locked)
/// where deposited is everything pulled from the CSP (create, top-ups, scale-ups) and reclaimed
/// everything returned to it unallocated (scale-downs, and the rest at cancel or close); an active
/// job may have reclaimed != 0 once it was scaled down. The contract enforces
/// allocRelease + allocRefund + allocBurn + reclaimed <= deposited at every application of totals
/// and every scale-down, and each outflow <= its allocation, so no job ever pays out more than its deposit,
/// whatever the oracles sign. Node pay is keyed by license id: the license is what earns and what
/// governance sanctions, and a node key can be rotated (relinked) without losing pay.
contract JobEscrow is AccessControl, EIP712, ReentrancyGuardTransient, Multicall {
    using SafeERC20 for IERC20;

    /// @notice Role allowed to set the attester, allow tokens and restrict CSPs.
    bytes32 public constant GOVERNANCE_ROLE = keccak256("GOVERNANCE_ROLE");
    /// @notice Where burned tokens go (an address nobody holds a key for).
    address public constant BURN_ADDRESS = 0x000000000000000000000000000000000000dEaD;
    /// @notice Leaf kind for a (job, license) cumulative node pay.
    uint8 public constant LEAF_RELEASE = 1;
    /// @notice Leaf kind for a job's cumulative totals.
    uint8 public constant LEAF_TOTALS = 2;

    bytes32 private constant CSP_ADMISSION_TYPEHASH =
        keccak256("CspAdmission(address csp,bytes32 kycRef,uint64 validUntil,uint256 nonce)");
    bytes32 private constant EPOCH_REPORT_TYPEHASH =
        keccak256("EpochReport(uint64 epoch,bytes32 root,bytes32 totalsRoot)");
    bytes32 private constant JOB_SUBMISSION_TYPEHASH =
        keccak256("JobSubmission(uint256 jobId,bytes32 specHash,uint256 nonce,uint64 expiry)");

    /// @notice Lifecycle of a job.
    enum JobStatus {
        None,
        Active,
        Cancelled,
        Closed
    }

    /// @notice Standing of a CSP, set by governance (blacklisting is final).
    enum CspStatus {
        Active,
        Frozen,
        Suspended,
        Blacklisted
    }

    /// @notice What a CSP asks for when creating a job.
    struct JobParams {
        bytes32 specHash;
        address token;
        uint32 replicas;
        uint32 epochs;
        uint64 startEpoch;
        uint128 pricePerNodeEpoch;
        uint8 releaseThreshold; // availability (0-255) at or above which a node's share is released
        uint8 burnFloor; // below this availability the share is burned; in between it is withheld
        uint16 protocolBurnBps; // share of every release that is burned
    }

    /// @notice A job and its accounts. Amounts are token units.
    struct Job {
        address csp;
        uint64 startEpoch;
        uint32 replicas;
        address token;
        uint32 epochs;
        JobStatus status;
        uint8 releaseThreshold;
        uint8 burnFloor;
        uint16 protocolBurnBps;
        bytes32 specHash;
        uint128 pricePerNodeEpoch;
        uint128 deposited; // pulled from the CSP (create, top-ups, scale-ups)
        uint128 allocRelease; // cumulative node pay assigned by reports
        uint128 releaseSpent; // released + forfeited (one slot with allocRelease: the claim path)
        uint128 allocRefund; // cumulative CSP refund assigned by reports
        uint128 refunded; // refund taken
        uint128 allocBurn; // cumulative burn assigned by reports
        uint128 burned; // burn executed
        uint128 reclaimed; // returned to the CSP unallocated (scale-down, cancel or close)
        uint128 forfeited; // node pay of blacklisted licenses, burned
    }

    /// @notice One job's cumulative totals in the report of `epoch`, with their proof against that
    /// report's totals root.
    struct TotalsProof {
        uint256 jobId;
        uint64 epoch;
        uint128 release;
        uint128 refund;
        uint128 burn;
        bytes32[] proof;
    }

    /// @notice A claim (or forfeit) of a (job, license)'s cumulative node pay against an epoch root.
    struct Claim {
        uint256 jobId;
        uint256 licenseId;
        uint64 epoch;
        uint128 cumulative;
        bytes32[] proof;
    }

    LicenseRegistry private immutable _licenses;
    OracleRegistry private immutable _oracles;
    uint64 private immutable _genesisTime;
    uint64 private immutable _epochSeconds;
    uint64 private immutable _closeGraceEpochs;

    address private _attester;
    uint64 private _nextEpoch; // every report must be for an epoch >= this
    uint256 private _lastJobId;
    mapping(uint256 jobId => Job) private _jobs;
    mapping(uint64 epoch => bytes32) private _roots;
    mapping(uint64 epoch => bytes32) private _totalsRoots;
    mapping(uint256 jobId => uint64) private _settledUntil; // 1 + the epoch of the totals applied last
    mapping(uint256 jobId => mapping(uint256 licenseId => uint256)) private _claimed;
    mapping(address token => bool) private _allowedTokens;
    mapping(address csp => uint64) private _admittedUntil;
    mapping(address csp => CspStatus) private _cspStatus;
    mapping(address csp => mapping(uint256 nonce => bool)) private _admissionNonceUsed;

    /// @notice The attestation was not signed by the attester (`signer` recovered).
    error JobEscrowInvalidAttestation(address signer);
    /// @notice The attestation expired at `validUntil`.
    error JobEscrowAdmissionExpired(uint64 validUntil);
    /// @notice This attestation nonce was already used for `csp`.
    error JobEscrowAdmissionReplayed(address csp, uint256 nonce);
    /// @notice The CSP holds no license (the deed requirement).
    error JobEscrowCspHoldsNoLicense(address csp);
    /// @notice The CSP is not admitted, or its admission expired.
    error JobEscrowCspNotAdmitted(address csp);
    /// @notice Governance restricted the CSP.
    error JobEscrowCspRestricted(address csp, CspStatus status);
    /// @notice The CSP already has that status, or is blacklisted for good.
    error JobEscrowCspStatusUnchanged(address csp, CspStatus status);
    /// @notice The token is not allowed for payment.
    error JobEscrowTokenNotAllowed(address token);
    /// @notice Replicas, epochs and price must all be non-zero.
    error JobEscrowInvalidShape(uint32 replicas, uint32 epochs, uint128 pricePerNodeEpoch);
    /// @notice The policy must have burnFloor <= releaseThreshold and protocolBurnBps <= 10000.
    error JobEscrowInvalidPolicy(uint8 releaseThreshold, uint8 burnFloor, uint16 protocolBurnBps);
    /// @notice The start epoch is already over.
    error JobEscrowStartInPast(uint64 startEpoch, uint64 currentEpoch);
    /// @notice The escrow received a different amount than was sent (fee-on-transfer tokens).
    error JobEscrowTransferMismatch(uint256 expected, uint256 received);
    /// @notice The job does not exist.
    error JobEscrowUnknownJob(uint256 jobId);
    /// @notice The job is not active (cancelled or closed).
    error JobEscrowJobNotActive(uint256 jobId, JobStatus status);
    /// @notice Only the job's CSP may do this.
    error JobEscrowNotJobOwner(uint256 jobId, address caller);
    /// @notice The amount must be non-zero.
    error JobEscrowZeroAmount();
    /// @notice The job has started (or has allocations), so it can no longer be cancelled.
    error JobEscrowJobAlreadyStarted(uint256 jobId, uint64 startEpoch);
    /// @notice The job can be closed only from epoch `closableFrom`.
    error JobEscrowJobNotClosable(uint256 jobId, uint64 closableFrom);
    /// @notice Reports must be for epochs after the last settled one (replays are rejected).
    error JobEscrowEpochNotAfterLast(uint64 epoch, uint64 nextEpoch);
    /// @notice The epoch has not ended yet.
    error JobEscrowEpochNotEnded(uint64 epoch, uint64 currentEpoch);
    /// @notice The proof does not prove the job's totals against the totals root of that epoch.
    error JobEscrowInvalidTotalsProof(uint256 jobId, uint64 epoch);
    /// @notice A job cannot close before the totals of the newest report that covers it are applied
    /// (during the grace period after it became closable).
    error JobEscrowTotalsNotApplied(uint256 jobId, uint64 settledUntil, uint64 needed);
    /// @notice Applied totals would lower a cumulative total of the job.
    error JobEscrowAllocationDecreased(uint256 jobId);
    /// @notice Applied totals would assign more than the job's deposit less what was already returned
    /// to the CSP: `allocated` (the report's totals) > `available` (deposited - reclaimed).
    error JobEscrowExceedsDeposit(uint256 jobId, uint256 allocated, uint256 available);
    /// @notice No root was posted for that epoch.
    error JobEscrowUnknownEpoch(uint64 epoch);
    /// @notice The Merkle proof does not prove the leaf against the epoch root.
    error JobEscrowInvalidProof(uint256 jobId, uint256 licenseId);
    /// @notice Everything the leaf grants was already paid.
    error JobEscrowNothingToClaim(uint256 jobId, uint256 licenseId);
    /// @notice Reports allocated nothing more to this job's refund (or burn) than was already paid.
    error JobEscrowNothingDue(uint256 jobId);
    /// @notice Paying this would exceed what reports allocated to the job for this purpose.
    error JobEscrowExceedsAllocation(uint256 jobId, uint256 allocated, uint256 requested);
    /// @notice The license may not claim (frozen, suspended or blacklisted).
    error JobEscrowLicenseRestricted(uint256 licenseId, LicenseRegistry.Status status);
    /// @notice Only a blacklisted license's pay can be forfeited.
    error JobEscrowLicenseNotBlacklisted(uint256 licenseId, LicenseRegistry.Status status);
    /// @notice The job has no epoch left to scale: its last epoch (before `endEpoch`) has begun or is over.
    error JobEscrowJobEnded(uint256 jobId, uint64 endEpoch);
    /// @notice The job already has `replicas` slots.
    error JobEscrowReplicasUnchanged(uint256 jobId, uint32 replicas);
    /// @notice A scale-down would return `refund`, more than the `locked` deposit reports left unallocated.
    error JobEscrowRefundExceedsLocked(uint256 jobId, uint256 refund, uint256 locked);

    /// @notice `csp` was admitted until `validUntil` on the attester's statement `kycRef`.
    event CspAdmitted(address indexed csp, bytes32 kycRef, uint64 validUntil, uint256 nonce);
    /// @notice Governance changed a CSP's standing.
    event CspStatusChanged(address indexed csp, CspStatus previous, CspStatus current);
    /// @notice Governance changed the attester.
    event AttesterChanged(address indexed previous, address indexed current);
    /// @notice Governance allowed or disallowed a payment token.
    event TokenAllowanceChanged(address indexed token, bool allowed);
    /// @notice A job was created and funded with `deposit`.
    event JobCreated(uint256 indexed jobId, address indexed csp, JobParams params, uint256 deposit);
    /// @notice The CSP added `amount` to the job's deposit.
    event JobToppedUp(uint256 indexed jobId, uint256 amount, uint256 deposited);
    /// @notice The CSP changed the job's spec hash (a new spec version).
    event JobSpecUpdated(uint256 indexed jobId, bytes32 previous, bytes32 current);
    /// @notice The CSP changed the job from `previous` to `current` slots from `fromEpoch` to its end,
    /// paying `pulled` more (scale up) or taking `refunded` back (scale down).
    event JobScaled(
        uint256 indexed jobId, uint32 previous, uint32 current, uint64 fromEpoch, uint256 pulled, uint256 refunded
    );
    /// @notice An unstarted job was cancelled and its deposit returned.
    event JobCancelled(uint256 indexed jobId, uint256 refund);
    /// @notice A finished job was closed and its unallocated remainder returned to the CSP.
    event JobClosed(uint256 indexed jobId, uint256 reclaimed);
    /// @notice A quorum-signed report for `epoch` landed.
    event EpochSettled(uint64 indexed epoch, bytes32 root, bytes32 totalsRoot, uint256 signers);
    /// @notice The totals of the report of `epoch` were applied to the job's accounts.
    event JobAllocated(uint256 indexed jobId, uint64 indexed epoch, uint128 release, uint128 refund, uint128 burn);
    /// @notice A license owner was paid node pay of a job.
    event Claimed(uint256 indexed jobId, uint256 indexed licenseId, address indexed owner, uint256 amount);
    /// @notice A blacklisted license's unclaimed pay was burned.
    event Forfeited(uint256 indexed jobId, uint256 indexed licenseId, uint256 amount);
    /// @notice The CSP was paid the job's refund.
    event RefundTaken(uint256 indexed jobId, address indexed csp, uint256 amount);
    /// @notice The job's burn allocation was burned.
    event BurnExecuted(uint256 indexed jobId, uint256 amount);

    /// @param admin Receives the admin and governance roles.
    /// @param licenses The license registry (licenses earn; CSPs must hold one).
    /// @param oracles The oracle registry that checks report quorums.
    /// @param attester Signs CSP admissions (KYC/KYB).
    /// @param genesisTime Timestamp at which epoch 0 starts.
    /// @param epochSeconds Length of an epoch.
    /// @param closeGraceEpochs Epochs after a job's last one before it may be closed without reports.
    constructor(
        address admin,
        LicenseRegistry licenses,
        OracleRegistry oracles,
        address attester,
        uint64 genesisTime,
        uint64 epochSeconds,
        uint64 closeGraceEpochs
    ) EIP712("deedmesh JobEscrow", "1") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(GOVERNANCE_ROLE, admin);
        _licenses = licenses;
        _oracles = oracles;
        _genesisTime = genesisTime;
        _epochSeconds = epochSeconds;
        _closeGraceEpochs = closeGraceEpochs;
        _attester = attester;
        emit AttesterChanged(address(0), attester);
    }

    // ------------------------------------------------------------------ CSP admission

    /// @notice Admit `csp` on the attester's signed KYC/KYB statement. Anyone may submit it.
    function admitCsp(address csp, bytes32 kycRef, uint64 validUntil, uint256 nonce, bytes calldata signature)
        external
    {
        if (validUntil <= block.timestamp) revert JobEscrowAdmissionExpired(validUntil);
        if (_cspStatus[csp] == CspStatus.Blacklisted) revert JobEscrowCspRestricted(csp, CspStatus.Blacklisted);
        if (_admissionNonceUsed[csp][nonce]) revert JobEscrowAdmissionReplayed(csp, nonce);
        address signer = ECDSA.recover(cspAdmissionDigest(csp, kycRef, validUntil, nonce), signature);
        if (signer != _attester) revert JobEscrowInvalidAttestation(signer);
        if (_licenses.balanceOf(csp) == 0) revert JobEscrowCspHoldsNoLicense(csp);
        _admissionNonceUsed[csp][nonce] = true;
        _admittedUntil[csp] = validUntil;
        emit CspAdmitted(csp, kycRef, validUntil, nonce);
    }

    // ------------------------------------------------------------------ jobs

    /// @notice Create and fund a job: pulls price x replicas x epochs of `params.token` from the caller.
    /// @return jobId The new job's id (ids start at 1).
    function createJob(JobParams calldata params) external nonReentrant returns (uint256 jobId) {
        address csp = _msgSender();
        _requireCspMayFund(csp);
        if (!_allowedTokens[params.token]) revert JobEscrowTokenNotAllowed(params.token);
        if (params.replicas == 0 || params.epochs == 0 || params.pricePerNodeEpoch == 0) {
            revert JobEscrowInvalidShape(params.replicas, params.epochs, params.pricePerNodeEpoch);
        }
        if (params.burnFloor > params.releaseThreshold || params.protocolBurnBps > 10_000) {
            revert JobEscrowInvalidPolicy(params.releaseThreshold, params.burnFloor, params.protocolBurnBps);
        }
        uint64 current = currentEpoch();
        if (params.startEpoch < current) revert JobEscrowStartInPast(params.startEpoch, current);
        uint256 deposit = uint256(params.pricePerNodeEpoch) * params.replicas * params.epochs;

        jobId = ++_lastJobId;
        Job storage job = _jobs[jobId];
        job.csp = csp;
        job.startEpoch = params.startEpoch;
        job.replicas = params.replicas;
        job.token = params.token;
        job.epochs = params.epochs;
        job.status = JobStatus.Active;
        job.releaseThreshold = params.releaseThreshold;
        job.burnFloor = params.burnFloor;
        job.protocolBurnBps = params.protocolBurnBps;
        job.specHash = params.specHash;
        job.pricePerNodeEpoch = params.pricePerNodeEpoch;
        job.deposited = SafeCast.toUint128(deposit);
        emit JobCreated(jobId, csp, params, deposit);

        _pull(params.token, csp, deposit);
    }

    /// @notice Add `amount` to the deposit of the caller's job.
    function topUp(uint256 jobId, uint256 amount) external nonReentrant {
        Job storage job = _requireOwnActiveJob(jobId);
        if (amount == 0) revert JobEscrowZeroAmount();
        _requireCspMayFund(job.csp);
        uint128 deposited = job.deposited + SafeCast.toUint128(amount);
        job.deposited = deposited;
        emit JobToppedUp(jobId, amount, deposited);
        _pull(job.token, job.csp, amount);
    }

    /// @notice Record a new spec version for the caller's job.
    function updateSpec(uint256 jobId, bytes32 specHash) external {
        Job storage job = _requireOwnActiveJob(jobId);
        bytes32 previous = job.specHash;
        job.specHash = specHash;
        emit JobSpecUpdated(jobId, previous, specHash);
    }

    /// @notice Change the caller's active job to `replicas` slots from epoch
    /// `fromEpoch = max(currentEpoch() + 1, startEpoch)` to the job's end (startEpoch + epochs), and
    /// record `specHash` (the spec with the new replica count). The current epoch is paid at the old
    /// count. Scaling up pulls price x (replicas - old) x remaining epochs from the caller and, like
    /// a top-up, needs a CSP that may fund (active, admitted, holding a license). Scaling down
    /// returns price x (old - replicas) x remaining epochs to the CSP at once (added to `reclaimed`)
    /// and is allowed whatever the CSP's standing or admission: like a cancel, it only gives the
    /// CSP back its own unspent money for slots nobody will serve, and a frozen CSP should be able to
    /// shrink what it is committed to. Neither checks the token allowance (it governs new jobs only).
    /// @param replicas The new slot count: non-zero (a stop is not a scale) and different from the job's.
    function scaleJob(uint256 jobId, uint32 replicas, bytes32 specHash) external nonReentrant {
        Job storage job = _requireOwnActiveJob(jobId);
        (uint256 pull, uint256 refund, uint64 fromEpoch) = _quoteScale(jobId, job, replicas);
        if (pull != 0) _requireCspMayFund(job.csp);

        uint32 previous = job.replicas;
        bytes32 previousSpec = job.specHash;
        job.replicas = replicas;
        job.specHash = specHash;
        if (pull != 0) {
            job.deposited = SafeCast.toUint128(uint256(job.deposited) + pull);
        } else {
            // refund <= locked <= deposited, a uint128, in _quoteScale: the cast cannot truncate
            job.reclaimed += uint128(refund);
        }
        emit JobScaled(jobId, previous, replicas, fromEpoch, pull, refund);
        emit JobSpecUpdated(jobId, previousSpec, specHash);

        if (pull != 0) {
            _pull(job.token, job.csp, pull);
        } else {
            IERC20(job.token).safeTransfer(job.csp, refund);
        }
    }

    /// @notice What `scaleJob(jobId, replicas, ...)` would move now: `pull` from the CSP (scale up)
    /// or `refund` to it (scale down), and the first epoch at the new count. Reverts as scaleJob
    /// would for the job and the count; it does not check the caller or the CSP's standing.
    function quoteScale(uint256 jobId, uint32 replicas)
        external
        view
        returns (uint256 pull, uint256 refund, uint64 fromEpoch)
    {
        Job storage job = _requireJob(jobId);
        if (job.status != JobStatus.Active) revert JobEscrowJobNotActive(jobId, job.status);
        return _quoteScale(jobId, job, replicas);
    }

    /// @notice Cancel the caller's job before its start epoch, refunding everything not yet returned
    /// (the whole deposit, less what scale-downs already gave back).
    function cancelJob(uint256 jobId) external nonReentrant {
        Job storage job = _requireOwnActiveJob(jobId);
        if (currentEpoch() >= job.startEpoch || job.allocRelease != 0 || job.allocRefund != 0 || job.allocBurn != 0) {
            revert JobEscrowJobAlreadyStarted(jobId, job.startEpoch);
        }
        uint128 refund = job.deposited - job.reclaimed;
        job.reclaimed = job.deposited;
        job.status = JobStatus.Cancelled;
        emit JobCancelled(jobId, refund);
        IERC20(job.token).safeTransfer(job.csp, refund);
    }

    /// @notice Close a job once its last epoch plus the grace period is over, returning to the CSP
    /// whatever no report allocated and no scale-down returned yet (the outcome for epochs that never
    /// reached a quorum). Anyone may call. Every report from the job's start on carries its totals,
    /// so for one more grace period the newest one that covers the job (up to its last epoch) must
    /// be applied first (`applyTotals` in the same `multicall`): nobody can close a job on older
    /// totals and take back pay that later reports assigned while its nodes can still claim it
    /// (every claim applies its job's totals). After that second grace period the job closes on
    /// the totals applied so far: a report that left the job out, or totals that can never apply,
    /// cannot lock the CSP's remainder for good (SETTLEMENT.md: no report, the CSP takes it back).
    function closeJob(uint256 jobId) external nonReentrant {
        Job storage job = _requireJob(jobId);
        if (job.status != JobStatus.Active) revert JobEscrowJobNotActive(jobId, job.status);
        uint64 endEpoch = job.startEpoch + job.epochs;
        uint64 closableFrom = endEpoch + _closeGraceEpochs;
        uint64 current = currentEpoch();
        if (current < closableFrom) revert JobEscrowJobNotClosable(jobId, closableFrom);
        uint64 needed = _nextEpoch < endEpoch ? _nextEpoch : endEpoch; // 1 + the newest epoch to cover
        if (needed > job.startEpoch && _settledUntil[jobId] < needed && current < closableFrom + _closeGraceEpochs) {
            revert JobEscrowTotalsNotApplied(jobId, _settledUntil[jobId], needed);
        }
        uint128 remainder = job.deposited - job.reclaimed - job.allocRelease - job.allocRefund - job.allocBurn;
        job.reclaimed += remainder;
        job.status = JobStatus.Closed;
        emit JobClosed(jobId, remainder);
        if (remainder != 0) IERC20(job.token).safeTransfer(job.csp, remainder);
    }

    // ------------------------------------------------------------------ epoch reports

    /// @notice Post the oracles' report for `epoch`: the Merkle root of each (job, license)'s
    /// cumulative node pay and the Merkle root of each job's cumulative totals, signed by a quorum
    /// (EIP-712 `EpochReport` under this contract's domain). Anyone may submit it. Epochs only move
    /// forward; amounts are cumulative, so a newer report supersedes an older one. The cost does not
    /// grow with the number of jobs: totals reach a job's accounts through `applyTotals`.
    function submitReport(uint64 epoch, bytes32 root, bytes32 totalsRoot, bytes[] calldata signatures) external {
        if (epoch < _nextEpoch) revert JobEscrowEpochNotAfterLast(epoch, _nextEpoch);
        uint64 current = currentEpoch();
        if (epoch >= current) revert JobEscrowEpochNotEnded(epoch, current);
        uint256 signers = _oracles.verifyQuorum(epochReportDigest(epoch, root, totalsRoot), signatures);
        _roots[epoch] = root;
        _totalsRoots[epoch] = totalsRoot;
        _nextEpoch = epoch + 1;
        emit EpochSettled(epoch, root, totalsRoot, signers);
    }

    /// @notice Apply jobs' cumulative totals, each proven against the totals root of a posted epoch,
    /// to their accounts: what claims, refunds and burns may then pay out. Anyone may call, usually
    /// in one `multicall` with the claim, refund, burn or close that needs them. Totals from an epoch
    /// not newer than the job's last applied ones are skipped, so keepers racing on the same report
    /// do not fail each other; newer ones may not lower any total, nor assign more than the job's
    /// deposit less what was returned to the CSP, whatever the oracles signed.
    function applyTotals(TotalsProof[] calldata totals) external {
        for (uint256 i = 0; i < totals.length; ++i) {
            TotalsProof calldata t = totals[i];
            Job storage job = _requireJob(t.jobId);
            if (job.status != JobStatus.Active) revert JobEscrowJobNotActive(t.jobId, job.status);
            bytes32 totalsRoot = _totalsRoots[t.epoch];
            if (totalsRoot == bytes32(0)) revert JobEscrowUnknownEpoch(t.epoch);
            if (!MerkleProof.verifyCalldata(t.proof, totalsRoot, totalsLeaf(t.jobId, t.release, t.refund, t.burn))) {
                revert JobEscrowInvalidTotalsProof(t.jobId, t.epoch);
            }
            if (t.epoch < _settledUntil[t.jobId]) continue;
            if (t.release < job.allocRelease || t.refund < job.allocRefund || t.burn < job.allocBurn) {
                revert JobEscrowAllocationDecreased(t.jobId);
            }
            uint256 allocated = uint256(t.release) + t.refund + t.burn;
            uint256 available = job.deposited - job.reclaimed; // scale-downs return part of an active job's deposit
            if (allocated > available) revert JobEscrowExceedsDeposit(t.jobId, allocated, available);
            job.allocRelease = t.release;
            job.allocRefund = t.refund;
            job.allocBurn = t.burn;
            _settledUntil[t.jobId] = t.epoch + 1;
            emit JobAllocated(t.jobId, t.epoch, t.release, t.refund, t.burn);
        }
    }

    // ------------------------------------------------------------------ payouts

    /// @notice Pay node pay to license owners: each claim proves a (job, license) cumulative amount
    /// against an epoch root and pays what was not paid yet to the license's current owner. Anyone
    /// may call (a keeper can batch claims of many licenses); consecutive claims with the same token
    /// and owner are paid in one transfer.
    function claim(Claim[] calldata claims) external nonReentrant {
        address[] memory tokens = new address[](claims.length);
        address[] memory owners = new address[](claims.length);
        uint256[] memory amounts = new uint256[](claims.length);
        uint256 transfers = 0;
        for (uint256 i = 0; i < claims.length; ++i) {
            Claim calldata c = claims[i];
            (address owner, LicenseRegistry.Status status) = _licenses.ownerAndStatusOf(c.licenseId);
            if (status != LicenseRegistry.Status.Active) revert JobEscrowLicenseRestricted(c.licenseId, status);
            (Job storage job, uint256 amount) = _spendRelease(c);
            emit Claimed(c.jobId, c.licenseId, owner, amount);
            address token = job.token;
            if (transfers != 0 && tokens[transfers - 1] == token && owners[transfers - 1] == owner) {
                amounts[transfers - 1] += amount;
            } else {
                tokens[transfers] = token;
                owners[transfers] = owner;
                amounts[transfers] = amount;
                ++transfers;
            }
        }
        for (uint256 i = 0; i < transfers; ++i) {
            IERC20(tokens[i]).safeTransfer(owners[i], amounts[i]);
        }
    }

    /// @notice Burn the unclaimed node pay of blacklisted licenses (the only way it can leave).
    function forfeit(Claim[] calldata claims) external nonReentrant {
        for (uint256 i = 0; i < claims.length; ++i) {
            Claim calldata c = claims[i];
            (, LicenseRegistry.Status status) = _licenses.ownerAndStatusOf(c.licenseId);
            if (status != LicenseRegistry.Status.Blacklisted) {
                revert JobEscrowLicenseNotBlacklisted(c.licenseId, status);
            }
            (Job storage job, uint256 amount) = _spendRelease(c);
            job.forfeited += uint128(amount); // bounded by allocRelease, a uint128, in _spendRelease
            emit Forfeited(c.jobId, c.licenseId, amount);
            IERC20(job.token).safeTransfer(BURN_ADDRESS, amount);
        }
    }

    /// @notice Pay each job's CSP the refund reports allocated to it and not yet taken. Anyone may call.
    function takeRefund(uint256[] calldata jobIds) external nonReentrant {
        for (uint256 i = 0; i < jobIds.length; ++i) {
            Job storage job = _requireJob(jobIds[i]);
            uint128 amount = job.allocRefund - job.refunded;
            if (amount == 0) revert JobEscrowNothingDue(jobIds[i]);
            job.refunded = job.allocRefund;
            emit RefundTaken(jobIds[i], job.csp, amount);
            IERC20(job.token).safeTransfer(job.csp, amount);
        }
    }

    /// @notice Burn what reports allocated to burning for each job and was not burned yet. Anyone may call.
    function executeBurn(uint256[] calldata jobIds) external nonReentrant {
        for (uint256 i = 0; i < jobIds.length; ++i) {
            Job storage job = _requireJob(jobIds[i]);
            uint128 amount = job.allocBurn - job.burned;
            if (amount == 0) revert JobEscrowNothingDue(jobIds[i]);
            job.burned = job.allocBurn;
            emit BurnExecuted(jobIds[i], amount);
            IERC20(job.token).safeTransfer(BURN_ADDRESS, amount);
        }
    }

    // ------------------------------------------------------------------ governance

    /// @notice Set the attester that signs CSP admissions.
    function setAttester(address attester_) external onlyRole(GOVERNANCE_ROLE) {
        emit AttesterChanged(_attester, attester_);
        _attester = attester_;
    }

    /// @notice Allow or disallow `token` as a payment token for new jobs.
    function setTokenAllowed(address token, bool allowed) external onlyRole(GOVERNANCE_ROLE) {
        _allowedTokens[token] = allowed;
        emit TokenAllowanceChanged(token, allowed);
    }

    /// @notice Set a CSP's standing; blacklisting is final. A restricted CSP cannot fund jobs.
    function setCspStatus(address csp, CspStatus status) external onlyRole(GOVERNANCE_ROLE) {
        CspStatus previous = _cspStatus[csp];
        if (previous == status || previous == CspStatus.Blacklisted) revert JobEscrowCspStatusUnchanged(csp, previous);
        _cspStatus[csp] = status;
        emit CspStatusChanged(csp, previous, status);
    }

    // ------------------------------------------------------------------ views

    /// @notice The epoch the chain's clock is in.
    function currentEpoch() public view returns (uint64) {
        if (block.timestamp < _genesisTime) return 0;
        return uint64((block.timestamp - _genesisTime) / _epochSeconds);
    }

    /// @notice Genesis time, epoch length and close grace (epochs) of the epoch clock.
    function epochClock() external view returns (uint64 genesisTime, uint64 epochSeconds, uint64 closeGraceEpochs) {
        return (_genesisTime, _epochSeconds, _closeGraceEpochs);
    }

    /// @notice Reports must be for this epoch or a later one.
    function nextEpoch() external view returns (uint64) {
        return _nextEpoch;
    }

    /// @notice The Merkle root posted for `epoch`, or zero.
    function rootOf(uint64 epoch) external view returns (bytes32) {
        return _roots[epoch];
    }

    /// @notice The totals root posted for `epoch`, or zero.
    function totalsRootOf(uint64 epoch) external view returns (bytes32) {
        return _totalsRoots[epoch];
    }

    /// @notice 1 + the epoch whose totals were last applied to the job (0: none yet).
    function settledUntil(uint256 jobId) external view returns (uint64) {
        return _settledUntil[jobId];
    }

    /// @notice A job with all its accounts.
    function getJob(uint256 jobId) external view returns (Job memory) {
        return _jobs[jobId];
    }

    /// @notice The highest job id so far.
    function lastJobId() external view returns (uint256) {
        return _lastJobId;
    }

    /// @notice Cumulative node pay of `licenseId` from `jobId` already paid (or forfeited).
    function claimedOf(uint256 jobId, uint256 licenseId) external view returns (uint256) {
        return _claimed[jobId][licenseId];
    }

    /// @notice Whether `csp` may fund jobs now.
    function isCspAdmitted(address csp) external view returns (bool) {
        return _admittedUntil[csp] > block.timestamp && _cspStatus[csp] == CspStatus.Active
            && _licenses.balanceOf(csp) != 0;
    }

    /// @notice Until when `csp` is admitted.
    function admittedUntil(address csp) external view returns (uint64) {
        return _admittedUntil[csp];
    }

    /// @notice The standing of `csp`.
    function cspStatus(address csp) external view returns (CspStatus) {
        return _cspStatus[csp];
    }

    /// @notice Whether `token` may pay for new jobs.
    function isTokenAllowed(address token) external view returns (bool) {
        return _allowedTokens[token];
    }

    /// @notice The attester of CSP admissions.
    function attester() external view returns (address) {
        return _attester;
    }

    /// @notice The license registry and oracle registry this escrow uses.
    function registries() external view returns (LicenseRegistry licenses, OracleRegistry oracles) {
        return (_licenses, _oracles);
    }

    /// @notice The Merkle leaf of a job's cumulative totals (OpenZeppelin double hash).
    function totalsLeaf(uint256 jobId, uint128 release, uint128 refund, uint128 burn) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(LEAF_TOTALS, jobId, release, refund, burn))));
    }

    /// @notice The Merkle leaf of a (job, license)'s cumulative node pay (OpenZeppelin double hash).
    function releaseLeaf(uint256 jobId, uint256 licenseId, uint256 cumulative) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(LEAF_RELEASE, jobId, licenseId, cumulative))));
    }

    /// @notice The EIP-712 digest the oracles sign for an epoch report.
    function epochReportDigest(uint64 epoch, bytes32 root, bytes32 totalsRoot) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(EPOCH_REPORT_TYPEHASH, epoch, root, totalsRoot)));
    }

    /// @notice The EIP-712 digest the attester signs to admit a CSP.
    function cspAdmissionDigest(address csp, bytes32 kycRef, uint64 validUntil, uint256 nonce)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(CSP_ADMISSION_TYPEHASH, csp, kycRef, validUntil, nonce)));
    }

    /// @notice The EIP-712 digest a CSP signs to submit job `jobId` with spec `specHash` to the mesh.
    /// Nodes check it off chain; it is here so both sides share one definition.
    function jobSubmissionDigest(uint256 jobId, bytes32 specHash, uint256 nonce, uint64 expiry)
        external
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(JOB_SUBMISSION_TYPEHASH, jobId, specHash, nonce, expiry)));
    }

    // ------------------------------------------------------------------ internals

    /// @dev Checks a claim's proof and caps, records it, and returns the amount to pay.
    function _spendRelease(Claim calldata c) private returns (Job storage job, uint256 amount) {
        bytes32 root = _roots[c.epoch];
        if (root == bytes32(0)) revert JobEscrowUnknownEpoch(c.epoch);
        if (!MerkleProof.verifyCalldata(c.proof, root, releaseLeaf(c.jobId, c.licenseId, c.cumulative))) {
            revert JobEscrowInvalidProof(c.jobId, c.licenseId);
        }
        uint256 already = _claimed[c.jobId][c.licenseId];
        if (c.cumulative <= already) revert JobEscrowNothingToClaim(c.jobId, c.licenseId);
        amount = c.cumulative - already;
        job = _jobs[c.jobId];
        uint256 spent = job.releaseSpent + amount;
        if (spent > job.allocRelease) revert JobEscrowExceedsAllocation(c.jobId, job.allocRelease, spent);
        _claimed[c.jobId][c.licenseId] = c.cumulative;
        // spent <= allocRelease, a uint128, so the cast cannot truncate
        job.releaseSpent = uint128(spent);
    }

    /// @dev The checks of a scale of `job` to `replicas` and its amounts (one of pull, refund is zero).
    function _quoteScale(uint256 jobId, Job storage job, uint32 replicas)
        private
        view
        returns (uint256 pull, uint256 refund, uint64 fromEpoch)
    {
        uint32 previous = job.replicas;
        if (replicas == 0) revert JobEscrowInvalidShape(replicas, job.epochs, job.pricePerNodeEpoch);
        if (replicas == previous) revert JobEscrowReplicasUnchanged(jobId, replicas);
        uint64 endEpoch = job.startEpoch + job.epochs;
        fromEpoch = currentEpoch() + 1;
        if (fromEpoch < job.startEpoch) fromEpoch = job.startEpoch;
        if (fromEpoch >= endEpoch) revert JobEscrowJobEnded(jobId, endEpoch);
        // < 2^128 x 2^32 x 2^32: no overflow in 256 bits
        uint256 perSlot = uint256(job.pricePerNodeEpoch) * (endEpoch - fromEpoch);
        if (replicas > previous) {
            pull = perSlot * (replicas - previous);
        } else {
            refund = perSlot * (previous - replicas);
            uint256 locked = uint256(job.deposited) - job.reclaimed - job.allocRelease - job.allocRefund - job.allocBurn;
            if (refund > locked) revert JobEscrowRefundExceedsLocked(jobId, refund, locked);
        }
    }

    function _pull(address token, address from, uint256 amount) private {
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(from, address(this), amount);
        uint256 received = IERC20(token).balanceOf(address(this)) - before;
        if (received != amount) revert JobEscrowTransferMismatch(amount, received);
    }

    function _requireCspMayFund(address csp) private view {
        CspStatus status = _cspStatus[csp];
        if (status != CspStatus.Active) revert JobEscrowCspRestricted(csp, status);
        if (_admittedUntil[csp] <= block.timestamp) revert JobEscrowCspNotAdmitted(csp);
        if (_licenses.balanceOf(csp) == 0) revert JobEscrowCspHoldsNoLicense(csp);
    }

    function _requireJob(uint256 jobId) private view returns (Job storage job) {
        job = _jobs[jobId];
        if (job.status == JobStatus.None) revert JobEscrowUnknownJob(jobId);
    }

    function _requireOwnActiveJob(uint256 jobId) private view returns (Job storage job) {
        job = _requireJob(jobId);
        if (job.csp != _msgSender()) revert JobEscrowNotJobOwner(jobId, _msgSender());
        if (job.status != JobStatus.Active) revert JobEscrowJobNotActive(jobId, job.status);
    }
}
