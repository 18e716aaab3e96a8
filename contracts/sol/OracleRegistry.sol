// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title OracleRegistry
/// @notice The oracle set and its threshold t of n, managed by governance, and the quorum check:
/// t distinct registered oracles signed an EIP-712 digest. The digest is computed by the consuming
/// contract under its own domain (name, version, chain id, verifying contract), so a signature for
/// one contract or chain is worthless on another.
contract OracleRegistry is AccessControl {
    /// @notice Role allowed to change the oracle set and the threshold.
    bytes32 public constant GOVERNANCE_ROLE = keccak256("GOVERNANCE_ROLE");

    /// @dev The distinct-signer check uses a 256-bit bitmap over oracle positions.
    uint256 private constant MAX_ORACLES = 256;

    address[] private _oracles;
    mapping(address oracle => uint256 position) private _positionPlusOne;
    uint8 private _threshold;

    /// @notice The address is already a registered oracle.
    error OracleRegistryAlreadyOracle(address oracle);
    /// @notice The address is not a registered oracle.
    error OracleRegistryNotOracle(address account);
    /// @notice The threshold must satisfy 1 <= t <= n.
    error OracleRegistryInvalidThreshold(uint256 threshold, uint256 oracleCount);
    /// @notice The oracle set is full.
    error OracleRegistryTooManyOracles();
    /// @notice Signature number `index` is malformed or does not recover.
    error OracleRegistryInvalidSignature(uint256 index);
    /// @notice The same oracle signed twice.
    error OracleRegistryDuplicateSigner(address oracle);
    /// @notice Fewer than `threshold` valid distinct oracle signatures.
    error OracleRegistryQuorumNotReached(uint256 signers, uint256 threshold);

    /// @notice `oracle` joined the set, which now has `oracleCount` members.
    event OracleAdded(address indexed oracle, uint256 oracleCount);
    /// @notice `oracle` left the set, which now has `oracleCount` members.
    event OracleRemoved(address indexed oracle, uint256 oracleCount);
    /// @notice The threshold changed.
    event ThresholdChanged(uint8 previous, uint8 current);

    /// @param admin Receives the admin and governance roles.
    /// @param oracles The initial oracle set.
    /// @param threshold The initial threshold t (1 <= t <= n).
    constructor(address admin, address[] memory oracles, uint8 threshold) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(GOVERNANCE_ROLE, admin);
        for (uint256 i = 0; i < oracles.length; ++i) {
            _add(oracles[i]);
        }
        _setThreshold(threshold);
    }

    /// @notice Add `oracle` to the set.
    function addOracle(address oracle) external onlyRole(GOVERNANCE_ROLE) {
        _add(oracle);
    }

    /// @notice Remove `oracle` from the set; the threshold must still be reachable afterwards.
    function removeOracle(address oracle) external onlyRole(GOVERNANCE_ROLE) {
        uint256 posPlusOne = _positionPlusOne[oracle];
        if (posPlusOne == 0) revert OracleRegistryNotOracle(oracle);
        uint256 last = _oracles.length - 1;
        if (_threshold > last) revert OracleRegistryInvalidThreshold(_threshold, last);
        address moved = _oracles[last];
        _oracles[posPlusOne - 1] = moved;
        _positionPlusOne[moved] = posPlusOne;
        _oracles.pop();
        delete _positionPlusOne[oracle];
        emit OracleRemoved(oracle, last);
    }

    /// @notice Set the threshold t (1 <= t <= n).
    function setThreshold(uint8 threshold) external onlyRole(GOVERNANCE_ROLE) {
        _setThreshold(threshold);
    }

    /// @notice Revert unless at least `threshold()` distinct registered oracles signed `digest`.
    /// @dev Signatures are 65-byte (r, s, v) with low s (OpenZeppelin ECDSA). Every signature must be
    /// valid and from a distinct oracle, so a bad signature is reported rather than skipped.
    /// @return signers The number of valid signatures.
    function verifyQuorum(bytes32 digest, bytes[] calldata signatures) external view returns (uint256 signers) {
        uint256 seen;
        for (uint256 i = 0; i < signatures.length; ++i) {
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signatures[i]);
            if (err != ECDSA.RecoverError.NoError) revert OracleRegistryInvalidSignature(i);
            uint256 posPlusOne = _positionPlusOne[signer];
            if (posPlusOne == 0) revert OracleRegistryNotOracle(signer);
            uint256 bit = 1 << (posPlusOne - 1);
            if (seen & bit != 0) revert OracleRegistryDuplicateSigner(signer);
            seen |= bit;
        }
        signers = signatures.length;
        if (signers < _threshold) revert OracleRegistryQuorumNotReached(signers, _threshold);
    }

    /// @notice Whether `account` is a registered oracle.
    function isOracle(address account) external view returns (bool) {
        return _positionPlusOne[account] != 0;
    }

    /// @notice The current oracle set (order is not meaningful).
    function oracles() external view returns (address[] memory) {
        return _oracles;
    }

    /// @notice The current threshold t.
    function threshold() external view returns (uint8) {
        return _threshold;
    }

    function _add(address oracle) private {
        if (oracle == address(0)) revert OracleRegistryNotOracle(oracle);
        if (_positionPlusOne[oracle] != 0) revert OracleRegistryAlreadyOracle(oracle);
        if (_oracles.length == MAX_ORACLES) revert OracleRegistryTooManyOracles();
        _oracles.push(oracle);
        _positionPlusOne[oracle] = _oracles.length;
        emit OracleAdded(oracle, _oracles.length);
    }

    function _setThreshold(uint8 threshold_) private {
        if (threshold_ == 0 || threshold_ > _oracles.length) {
            revert OracleRegistryInvalidThreshold(threshold_, _oracles.length);
        }
        emit ThresholdChanged(_threshold, threshold_);
        _threshold = threshold_;
    }
}
