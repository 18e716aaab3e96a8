// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title LicenseRegistry
/// @notice Node licenses ("deeds") as ERC-721 tokens. Each license links at most one node address
/// (the node's secp256k1 key, which is also its libp2p identity), and governance sets a status per
/// license: active, frozen (no earning, reversible), suspended (no placement, pay withheld) or
/// blacklisted (permanent; the linked node address is banned for good).
/// @dev License ids start at 1, so 0 means "no license" in every getter.
contract LicenseRegistry is ERC721, AccessControl {
    /// @notice Role allowed to mint licenses (the sale).
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");
    /// @notice Role allowed to change license statuses (the trust protocol).
    bytes32 public constant GOVERNANCE_ROLE = keccak256("GOVERNANCE_ROLE");

    /// @notice Status of a license. Only `Active` licenses are eligible to earn and be placed on.
    enum Status {
        Active,
        Frozen,
        Suspended,
        Blacklisted
    }

    struct License {
        address node; // linked node address, or zero
        Status status;
        uint64 relinkReadyAt; // timestamp from which a new node may be linked
        address previousNode; // the node unlinked last: still answerable for this license's record
    }

    /// @notice Longest relink cooldown governance may set (keeps `now + cooldown` far from overflow).
    uint64 public constant MAX_RELINK_COOLDOWN = 365 days;

    mapping(uint256 licenseId => License) private _licenses;
    mapping(address node => uint256 licenseId) private _licenseOfNode;
    mapping(address node => bool) private _bannedNodes;
    mapping(address node => uint64 readyAt) private _nodeRelinkReadyAt;
    uint256 private _lastLicenseId;
    uint64 private _relinkCooldown;

    /// @notice The caller does not own the license.
    error LicenseRegistryNotLicenseOwner(uint256 licenseId, address caller);
    /// @notice The license already has a linked node.
    error LicenseRegistryLicenseAlreadyLinked(uint256 licenseId, address node);
    /// @notice The node address is already linked to a license.
    error LicenseRegistryNodeAlreadyLinked(address node, uint256 licenseId);
    /// @notice The license has no linked node.
    error LicenseRegistryLicenseNotLinked(uint256 licenseId);
    /// @notice A node may be linked again only after the relink cooldown.
    error LicenseRegistryRelinkCooldown(uint256 licenseId, uint64 readyAt);
    /// @notice An unlinked node may link again (to any license) only after the relink cooldown.
    error LicenseRegistryNodeCooldown(address node, uint64 readyAt);
    /// @notice The relink cooldown may not exceed `MAX_RELINK_COOLDOWN`.
    error LicenseRegistryCooldownTooLong(uint64 cooldown, uint64 max);
    /// @notice The zero address cannot be a node.
    error LicenseRegistryZeroNode();
    /// @notice The node address was linked to a blacklisted license and is banned for good.
    error LicenseRegistryNodeBanned(address node);
    /// @notice The license is blacklisted: its status is final and it cannot move or link.
    error LicenseRegistryLicenseBlacklisted(uint256 licenseId);
    /// @notice The license does not exist.
    error LicenseRegistryUnknownLicense(uint256 licenseId);
    /// @notice The license already has that status.
    error LicenseRegistryStatusUnchanged(uint256 licenseId, Status status);

    /// @notice A new license was minted.
    event LicenseMinted(uint256 indexed licenseId, address indexed owner);
    /// @notice `node` was linked to `licenseId`.
    event NodeLinked(uint256 indexed licenseId, address indexed node);
    /// @notice `node` was unlinked from `licenseId`; a new link is possible from `relinkReadyAt`.
    event NodeUnlinked(uint256 indexed licenseId, address indexed node, uint64 relinkReadyAt);
    /// @notice Governance changed the status of a license.
    event LicenseStatusChanged(uint256 indexed licenseId, Status previous, Status current);
    /// @notice The admin changed the relink cooldown.
    event RelinkCooldownChanged(uint64 previous, uint64 current);

    /// @param admin Receives the admin, minter and governance roles.
    /// @param relinkCooldown_ Seconds a license must wait after an unlink before linking again.
    constructor(address admin, uint64 relinkCooldown_) ERC721("deedmesh node license", "DEED") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MINTER_ROLE, admin);
        _grantRole(GOVERNANCE_ROLE, admin);
        if (relinkCooldown_ > MAX_RELINK_COOLDOWN) {
            revert LicenseRegistryCooldownTooLong(relinkCooldown_, MAX_RELINK_COOLDOWN);
        }
        _relinkCooldown = relinkCooldown_;
        emit RelinkCooldownChanged(0, relinkCooldown_);
    }

    // ------------------------------------------------------------------ minting and links

    /// @notice Mint a new license to `to`.
    /// @return licenseId The new license's id (ids start at 1).
    function mint(address to) external onlyRole(MINTER_ROLE) returns (uint256 licenseId) {
        licenseId = ++_lastLicenseId;
        _safeMint(to, licenseId);
        emit LicenseMinted(licenseId, to);
    }

    /// @notice Link `node` to the caller's license `licenseId`.
    function linkNode(uint256 licenseId, address node) external {
        _requireLicenseOwner(licenseId);
        if (node == address(0)) revert LicenseRegistryZeroNode();
        License storage lic = _licenses[licenseId];
        if (lic.status == Status.Blacklisted) revert LicenseRegistryLicenseBlacklisted(licenseId);
        if (lic.node != address(0)) revert LicenseRegistryLicenseAlreadyLinked(licenseId, lic.node);
        if (_bannedNodes[node]) revert LicenseRegistryNodeBanned(node);
        uint256 other = _licenseOfNode[node];
        if (other != 0) revert LicenseRegistryNodeAlreadyLinked(node, other);
        if (block.timestamp < lic.relinkReadyAt) revert LicenseRegistryRelinkCooldown(licenseId, lic.relinkReadyAt);
        uint64 nodeReadyAt = _nodeRelinkReadyAt[node];
        if (block.timestamp < nodeReadyAt) revert LicenseRegistryNodeCooldown(node, nodeReadyAt);
        lic.node = node;
        _licenseOfNode[node] = licenseId;
        emit NodeLinked(licenseId, node);
    }

    /// @notice Unlink the node of the caller's license `licenseId`; starts the relink cooldown of
    /// both the license and the node. A blacklisted license keeps its record: it cannot unlink.
    function unlinkNode(uint256 licenseId) external {
        _requireLicenseOwner(licenseId);
        License storage lic = _licenses[licenseId];
        if (lic.status == Status.Blacklisted) revert LicenseRegistryLicenseBlacklisted(licenseId);
        if (lic.node == address(0)) revert LicenseRegistryLicenseNotLinked(licenseId);
        _unlink(licenseId);
    }

    // ------------------------------------------------------------------ governance

    /// @notice Set the status of a license. Blacklisting is final and bans the linked node address
    /// and the node unlinked last (so unlinking just before a blacklisting lands does not save it).
    function setStatus(uint256 licenseId, Status status) external onlyRole(GOVERNANCE_ROLE) {
        _requireExists(licenseId);
        License storage lic = _licenses[licenseId];
        Status previous = lic.status;
        if (previous == Status.Blacklisted) revert LicenseRegistryLicenseBlacklisted(licenseId);
        if (previous == status) revert LicenseRegistryStatusUnchanged(licenseId, status);
        lic.status = status;
        if (status == Status.Blacklisted) {
            if (lic.node != address(0)) _bannedNodes[lic.node] = true;
            if (lic.previousNode != address(0)) _bannedNodes[lic.previousNode] = true;
        }
        emit LicenseStatusChanged(licenseId, previous, status);
    }

    /// @notice Change the relink cooldown (seconds, at most `MAX_RELINK_COOLDOWN`).
    function setRelinkCooldown(uint64 cooldown) external onlyRole(DEFAULT_ADMIN_ROLE) {
        if (cooldown > MAX_RELINK_COOLDOWN) revert LicenseRegistryCooldownTooLong(cooldown, MAX_RELINK_COOLDOWN);
        emit RelinkCooldownChanged(_relinkCooldown, cooldown);
        _relinkCooldown = cooldown;
    }

    // ------------------------------------------------------------------ views

    /// @notice The node linked to `licenseId`, or zero.
    function nodeOf(uint256 licenseId) external view returns (address) {
        return _licenses[licenseId].node;
    }

    /// @notice The license `node` is linked to, or 0.
    function licenseOfNode(address node) external view returns (uint256) {
        return _licenseOfNode[node];
    }

    /// @notice The status of `licenseId` (reverts for an unknown license).
    function statusOf(uint256 licenseId) external view returns (Status) {
        _requireExists(licenseId);
        return _licenses[licenseId].status;
    }

    /// @notice Owner and status of `licenseId` in one call (what the escrow needs to pay a claim).
    function ownerAndStatusOf(uint256 licenseId) external view returns (address owner, Status status) {
        owner = _requireExists(licenseId);
        status = _licenses[licenseId].status;
    }

    /// @notice Timestamp from which `node` may be linked again after an unlink.
    function nodeRelinkReadyAt(address node) external view returns (uint64) {
        return _nodeRelinkReadyAt[node];
    }

    /// @notice The node most recently unlinked from `licenseId`, or zero.
    function previousNodeOf(uint256 licenseId) external view returns (address) {
        return _licenses[licenseId].previousNode;
    }

    /// @notice Timestamp from which `licenseId` may link a node again.
    function relinkReadyAt(uint256 licenseId) external view returns (uint64) {
        return _licenses[licenseId].relinkReadyAt;
    }

    /// @notice Whether `node` was banned by a blacklisting.
    function isNodeBanned(address node) external view returns (bool) {
        return _bannedNodes[node];
    }

    /// @notice Whether `node` is linked to an active license: the only nodes that may publish, be
    /// placed on and earn.
    function isNodeEligible(address node) external view returns (bool) {
        uint256 licenseId = _licenseOfNode[node];
        return licenseId != 0 && _licenses[licenseId].status == Status.Active;
    }

    /// @notice The relink cooldown in seconds.
    function relinkCooldown() external view returns (uint64) {
        return _relinkCooldown;
    }

    /// @notice The highest license id minted so far (also the number of licenses).
    function lastLicenseId() external view returns (uint256) {
        return _lastLicenseId;
    }

    /// @inheritdoc ERC721
    function supportsInterface(bytes4 interfaceId) public view override(ERC721, AccessControl) returns (bool) {
        return super.supportsInterface(interfaceId);
    }

    // ------------------------------------------------------------------ internals

    /// @dev A transfer unlinks the node (the new owner links their own) and a blacklisted license
    /// cannot move, so a sanction cannot be shed by selling the deed.
    function _update(address to, uint256 tokenId, address auth) internal override returns (address from) {
        from = super._update(to, tokenId, auth);
        if (from != address(0)) {
            if (_licenses[tokenId].status == Status.Blacklisted) revert LicenseRegistryLicenseBlacklisted(tokenId);
            if (_licenses[tokenId].node != address(0)) _unlink(tokenId);
        }
    }

    function _unlink(uint256 licenseId) private {
        License storage lic = _licenses[licenseId];
        address node = lic.node;
        delete _licenseOfNode[node];
        lic.node = address(0);
        lic.previousNode = node;
        uint64 readyAt = uint64(block.timestamp) + _relinkCooldown;
        lic.relinkReadyAt = readyAt;
        _nodeRelinkReadyAt[node] = readyAt;
        emit NodeUnlinked(licenseId, node, readyAt);
    }

    function _requireLicenseOwner(uint256 licenseId) private view {
        address owner = _requireExists(licenseId);
        if (owner != _msgSender()) revert LicenseRegistryNotLicenseOwner(licenseId, _msgSender());
    }

    function _requireExists(uint256 licenseId) private view returns (address owner) {
        owner = _ownerOf(licenseId);
        if (owner == address(0)) revert LicenseRegistryUnknownLicense(licenseId);
    }
}
